//! TLS on node-to-node connections: the TLS handshake (tokio-rustls), then
//! the connection's rustls state shared by its two halves.
//!
//! After the handshakes the connection leaves tokio-rustls: its TCP socket
//! is split as a plaintext one is, and one rustls connection object (behind
//! a mutex) serves both halves. A sender encrypts its frame into the
//! writer's buffer under the writer's lock and writes it with the same
//! non-blocking `try_write` as on a plaintext connection (see
//! `conn::Writer`), so TLS adds no hand-off to another task and frames stay
//! whole and in order. The reader ([`TlsRead`]) feeds what the socket gives
//! to rustls and reads the plaintext out; what rustls must answer on its
//! own (a key update, an alert) goes out through the writer.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::conn::Writer;

/// One connection's rustls state, shared by its reader and writer.
pub(crate) type Session = Arc<Mutex<rustls::Connection>>;

/// How much ciphertext one read from the socket takes at most.
const READ_CHUNK: usize = 64 * 1024;

/// The TLS handshake as the client, dialling node `peer` by its name: the
/// server's certificate must chain to the CA and name that node.
pub(crate) async fn connect(
    tls: &crate::tls::TlsConfig,
    peer: u64,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = tls.server_name(peer)?;
    tokio_rustls::TlsConnector::from(tls.client())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// The TLS handshake as the server: the client's certificate must chain to
/// the CA (which node it names is checked once the client says who it is).
pub(crate) async fn accept(
    tls: &crate::tls::TlsConfig,
    stream: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    tokio_rustls::TlsAcceptor::from(tls.server())
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// With TLS, whether the client's certificate names node `claimed`, the
/// id it gave in its `Hello` (a valid certificate of node 3 cannot pose as
/// node 1). Without TLS there is nothing to check.
pub(crate) fn check_claim(
    stream: &Stream,
    cfg: &super::TransportConfig,
    claimed: u64,
) -> Result<(), String> {
    let (Stream::Server(s), Some(tls)) = (stream, &cfg.tls) else {
        return Ok(());
    };
    let cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the client presented no certificate")?;
    tls.check_names(cert, claimed)
        .map_err(|e| format!("the peer claiming to be node {claimed} is refused: {e}"))
}

/// A connection during the handshakes: plaintext, or TLS as either end.
pub(crate) enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half of a connection, plaintext or TLS.
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(TlsRead),
}

/// The TCP halves and, with TLS, the shared session of an established
/// connection (the handshakes done).
pub(crate) fn split(
    stream: Stream,
) -> (
    OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    Option<Session>,
) {
    let (tcp, session) = match stream {
        Stream::Plain(s) => (s, None),
        Stream::Client(s) => {
            let (tcp, c) = s.into_inner();
            (tcp, Some(rustls::Connection::Client(c)))
        }
        Stream::Server(s) => {
            let (tcp, c) = s.into_inner();
            (tcp, Some(rustls::Connection::Server(c)))
        }
    };
    let session = session.map(|mut c| {
        // the writer drains rustls's output into its own buffer after
        // every frame; its own limit (`write_buffer`) is the backpressure
        c.set_buffer_limit(None);
        Arc::new(Mutex::new(c))
    });
    let (r, w) = tcp.into_split();
    (r, w, session)
}

impl ReadHalf {
    /// The reading half over `r`; with TLS, `writer` sends what rustls
    /// must answer by itself.
    pub(crate) fn new(r: OwnedReadHalf, session: Option<Session>, writer: &Arc<Writer>) -> Self {
        match session {
            None => ReadHalf::Plain(r),
            Some(session) => ReadHalf::Tls(TlsRead {
                raw: r,
                session,
                writer: writer.clone(),
                cipher: vec![0; READ_CHUNK].into_boxed_slice(),
                start: 0,
                end: 0,
                eof: false,
            }),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(t) => t.poll_read(cx, buf),
        }
    }
}

/// The reading half of a TLS connection.
pub(crate) struct TlsRead {
    raw: OwnedReadHalf,
    session: Session,
    writer: Arc<Writer>,
    /// Ciphertext read from the socket; `start..end` not yet given to rustls.
    cipher: Box<[u8]>,
    start: usize,
    end: usize,
    /// The socket reached its end.
    eof: bool,
}

impl TlsRead {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut fed = false;
            let answer = {
                let mut s = self.session.lock();
                if self.start < self.end || self.eof {
                    let mut pending = &self.cipher[self.start..self.end];
                    let before = pending.len();
                    match s.read_tls(&mut pending) {
                        Ok(_) => {}
                        // rustls holds as much as it takes: read it out first
                        Err(e) if e.kind() == io::ErrorKind::Other => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    fed = before > pending.len();
                    self.start += before - pending.len();
                    if let Err(e) = s.process_new_packets() {
                        // rustls queued an alert for the peer: best effort
                        drop(s);
                        self.writer.push_tls();
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                let read = s.reader().read(buf.initialize_unfilled());
                let answer = s.wants_write();
                drop(s);
                match read {
                    Ok(n) => {
                        buf.advance(n);
                        if answer {
                            self.writer.push_tls();
                        }
                        // n == 0: the peer closed the session cleanly
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // the peer closed the socket without closing the
                    // session: as a plain end (the frames are length
                    // delimited, so a cut inside a frame is still seen)
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
                answer
            };
            if answer {
                self.writer.push_tls();
            }
            if self.start < self.end {
                if !fed {
                    // rustls takes nothing more and gives nothing back
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS: the session takes no more data",
                    )));
                }
                continue;
            }
            if self.eof {
                // rustls saw the end and still has no plaintext nor an
                // error: an end all the same
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut self.cipher);
            ready!(Pin::new(&mut self.raw).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}
