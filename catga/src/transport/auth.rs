//! The mutual challenge-response handshake (see the module docs for the
//! message flow).

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::frame::{self, Frame, HANDSHAKE_MAX_FRAME, Ident, NONCE_LEN};
use super::tls::Stream;
use super::{Faults, TransportConfig, TransportError};

type HmacSha256 = Hmac<Sha256>;
type Nonce = [u8; NONCE_LEN];

const DOMAIN: &[u8] = b"catga transport v1";
pub(super) const SERVER: &[u8] = b"server";
pub(super) const CLIENT: &[u8] = b"client";

/// An authenticated stream and the bytes already read past the handshake.
pub(crate) struct Authenticated {
    pub stream: Stream,
    pub read_buf: BytesMut,
}

/// The client's side: proves we know the secret to node `expected` and checks
/// that it does. A connection lost before the server has shown its proof is
/// `Unreachable` (the server may be down, or refusing us as a test fault);
/// anything else that goes wrong is `Handshake`.
pub(crate) async fn client(
    stream: Stream,
    cfg: &TransportConfig,
    expected: u64,
) -> Result<Authenticated, TransportError> {
    let handshake = |e: String| TransportError::Handshake(e);
    let lost = |e: String| {
        TransportError::Unreachable(format!("node {expected} closed the connection: {e}"))
    };
    let mut framed = Framed::new(stream, frame::codec(HANDSHAKE_MAX_FRAME));
    let nc: Nonce = rand::random();
    let ic = cfg.identity.as_ref().and_then(|i| i.local());
    let hello = Frame::Hello {
        node_id: cfg.node_id,
        nonce: nc,
        ident: ic,
    };
    send(&mut framed, &hello).await.map_err(lost)?;
    let (server, ns, proof, is) = match recv(&mut framed).await {
        Ok(Frame::Challenge {
            node_id,
            nonce,
            proof,
            ident,
        }) => (node_id, nonce, proof, ident),
        Ok(other) => return Err(handshake(unexpected(&other, "Challenge"))),
        Err(Recv::Lost(e)) => return Err(lost(e)),
        Err(Recv::Bad(e)) => return Err(handshake(e)),
    };
    if server != expected {
        return Err(handshake(format!(
            "the node at this address is node {server}, not node {expected}"
        )));
    }
    let ids = (ic, is);
    if !verify(
        &cfg.secret,
        SERVER,
        cfg.node_id,
        server,
        &nc,
        &ns,
        ids,
        &proof,
    ) {
        return Err(handshake(format!(
            "node {server} could not prove it knows the cluster secret; \
             is the same secret configured on every node?"
        )));
    }
    let refusal = match &cfg.identity {
        Some(check) => check.check(server, is).err(),
        None => None,
    };
    let proof =
        prove(&cfg.secret, CLIENT, cfg.node_id, server, &nc, &ns, ids).map_err(handshake)?;
    send(&mut framed, &Frame::Proof { proof })
        .await
        .map_err(lost)?;
    if let Some(reason) = refusal {
        // Tell the refused node why, after our proof (so it can trust
        // the refusal): otherwise a node that only ever hears from the
        // leader (a wiped follower) would never learn it is refused.
        // Best effort: the refusal stands whatever happens to the message.
        let _ = send(
            &mut framed,
            &Frame::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(TransportError::Refused(format!(
            "node {server} is refused by this node: {reason}"
        )));
    }
    match recv(&mut framed).await {
        Ok(Frame::Welcome) => {
            if let Some(check) = &cfg.identity {
                check.accepted_by(server);
            }
        }
        Ok(Frame::Refused { reason }) => {
            if let Some(check) = &cfg.identity {
                check.refused_by(server, &reason);
            }
            return Err(TransportError::Refused(format!(
                "node {server} refuses this node: {reason}"
            )));
        }
        Ok(other) => return Err(handshake(unexpected(&other, "Welcome"))),
        Err(Recv::Lost(e) | Recv::Bad(e)) => {
            return Err(handshake(format!(
                "node {server} refused our proof ({e}); is the same secret configured on every node?"
            )));
        }
    }
    let parts = framed.into_parts();
    Ok(Authenticated {
        stream: parts.io,
        read_buf: parts.read_buf,
    })
}

/// Why the server side of a handshake failed.
pub(crate) enum ServerError {
    /// The handshake broke (a sentence for the log).
    Failed(String),
    /// This node refused `peer`, an authenticated node (told why).
    Refused {
        /// The refused node.
        peer: u64,
        /// Why.
        reason: String,
    },
}

impl From<String> for ServerError {
    fn from(e: String) -> ServerError {
        ServerError::Failed(e)
    }
}

impl From<Recv> for ServerError {
    fn from(r: Recv) -> ServerError {
        ServerError::Failed(r.into())
    }
}

/// The server's side: returns the client's node id once it has proved it
/// knows the secret.
pub(crate) async fn server(
    stream: Stream,
    cfg: &TransportConfig,
    faults: &Faults,
) -> Result<(u64, Authenticated), ServerError> {
    let mut framed = Framed::new(stream, frame::codec(HANDSHAKE_MAX_FRAME));
    let (client, nc, ic) = match recv(&mut framed).await? {
        Frame::Hello {
            node_id,
            nonce,
            ident,
        } => (node_id, nonce, ident),
        other => return Err(unexpected(&other, "Hello").into()),
    };
    // with TLS, the client's certificate must name the node it claims to be
    super::tls::check_claim(framed.get_ref(), cfg, client)?;
    if faults.is_blocked(client) {
        return Err(format!("node {client} is cut off (fault injection)").into());
    }
    let ns: Nonce = rand::random();
    let is = cfg.identity.as_ref().and_then(|i| i.local());
    let ids = (ic, is);
    let proof = prove(&cfg.secret, SERVER, client, cfg.node_id, &nc, &ns, ids)?;
    send(
        &mut framed,
        &Frame::Challenge {
            node_id: cfg.node_id,
            nonce: ns,
            proof,
            ident: is,
        },
    )
    .await?;
    let proof = match recv(&mut framed).await? {
        Frame::Proof { proof } => proof,
        other => return Err(unexpected(&other, "Proof").into()),
    };
    if !verify(
        &cfg.secret,
        CLIENT,
        client,
        cfg.node_id,
        &nc,
        &ns,
        ids,
        &proof,
    ) {
        return Err(format!(
            "the peer claiming to be node {client} could not prove it knows the cluster secret"
        )
        .into());
    }
    if let Some(check) = &cfg.identity
        && let Err(reason) = check.check(client, ic)
    {
        let _ = send(
            &mut framed,
            &Frame::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(ServerError::Refused {
            peer: client,
            reason,
        });
    }
    send(&mut framed, &Frame::Welcome).await?;
    let parts = framed.into_parts();
    Ok((
        client,
        Authenticated {
            stream: parts.io,
            read_buf: parts.read_buf,
        },
    ))
}

/// The identities of (client, server), covered by the proofs when present
/// (absent ones add nothing, so a peer without identity proves as before).
pub(super) type Idents = (Option<Ident>, Option<Ident>);

#[allow(clippy::too_many_arguments)]
fn mac(
    secret: &[u8],
    role: &[u8],
    client: u64,
    server: u64,
    nc: &Nonce,
    ns: &Nonce,
    ids: Idents,
) -> Result<HmacSha256, String> {
    // HMAC accepts keys of any length, so this does not fail in practice.
    let mut m = HmacSha256::new_from_slice(secret).map_err(|e| format!("HMAC key: {e}"))?;
    m.update(DOMAIN);
    m.update(role);
    m.update(&client.to_be_bytes());
    m.update(&server.to_be_bytes());
    m.update(nc);
    m.update(ns);
    for (label, id) in [(b"client ident", ids.0), (b"server ident", ids.1)] {
        if let Some(id) = id {
            m.update(label);
            m.update(&id.cluster.to_be_bytes());
            m.update(&id.incarnation.to_be_bytes());
        }
    }
    Ok(m)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn prove(
    secret: &[u8],
    role: &[u8],
    client: u64,
    server: u64,
    nc: &Nonce,
    ns: &Nonce,
    ids: Idents,
) -> Result<Nonce, String> {
    Ok(mac(secret, role, client, server, nc, ns, ids)?
        .finalize()
        .into_bytes()
        .into())
}

/// Constant-time comparison.
#[allow(clippy::too_many_arguments)]
fn verify(
    secret: &[u8],
    role: &[u8],
    client: u64,
    server: u64,
    nc: &Nonce,
    ns: &Nonce,
    ids: Idents,
    proof: &Nonce,
) -> bool {
    mac(secret, role, client, server, nc, ns, ids).is_ok_and(|m| m.verify_slice(proof).is_ok())
}

async fn send(framed: &mut Framed<Stream, LengthDelimitedCodec>, f: &Frame) -> Result<(), String> {
    let mut buf = BytesMut::new();
    frame::encode_payload(f, &mut buf).map_err(|e| e.to_string())?;
    framed
        .send(buf.freeze())
        .await
        .map_err(|e| format!("sending {}: {e}", f.kind()))
}

enum Recv {
    /// The connection failed or was closed.
    Lost(String),
    /// The peer sent something that is not a frame.
    Bad(String),
}

impl From<Recv> for String {
    fn from(r: Recv) -> String {
        match r {
            Recv::Lost(e) | Recv::Bad(e) => e,
        }
    }
}

async fn recv(framed: &mut Framed<Stream, LengthDelimitedCodec>) -> Result<Frame, Recv> {
    match framed.next().await {
        Some(Ok(payload)) => {
            frame::decode_frame(payload.freeze()).map_err(|e| Recv::Bad(e.to_string()))
        }
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(Recv::Bad(e.to_string()))
        }
        Some(Err(e)) => Err(Recv::Lost(format!("reading: {e}"))),
        None => Err(Recv::Lost(
            "the connection was closed during the handshake".to_owned(),
        )),
    }
}

fn unexpected(f: &Frame, wanted: &str) -> String {
    format!("expected {wanted}, got {}", f.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Idents = (None, None);

    #[test]
    fn proofs_bind_role_ids_and_nonces() {
        let (nc, ns) = ([1u8; 32], [2u8; 32]);
        let p = prove(b"s", SERVER, 1, 2, &nc, &ns, NONE).unwrap();
        assert!(verify(b"s", SERVER, 1, 2, &nc, &ns, NONE, &p));
        assert!(
            !verify(b"t", SERVER, 1, 2, &nc, &ns, NONE, &p),
            "other secret"
        );
        assert!(!verify(b"s", CLIENT, 1, 2, &nc, &ns, NONE, &p), "reflected");
        assert!(
            !verify(b"s", SERVER, 3, 2, &nc, &ns, NONE, &p),
            "other client"
        );
        assert!(
            !verify(b"s", SERVER, 1, 3, &nc, &ns, NONE, &p),
            "other server"
        );
        assert!(
            !verify(b"s", SERVER, 1, 2, &[9; 32], &ns, NONE, &p),
            "replayed"
        );
        assert!(
            !verify(b"s", SERVER, 1, 2, &nc, &[9; 32], NONE, &p),
            "replayed"
        );
    }

    #[test]
    fn proofs_bind_identities() {
        let (nc, ns) = ([1u8; 32], [2u8; 32]);
        let a = Ident {
            cluster: 5,
            incarnation: 6,
        };
        let b = Ident {
            cluster: 5,
            incarnation: 7,
        };
        let p = prove(b"s", SERVER, 1, 2, &nc, &ns, (Some(a), Some(b))).unwrap();
        assert!(verify(b"s", SERVER, 1, 2, &nc, &ns, (Some(a), Some(b)), &p));
        assert!(!verify(
            b"s",
            SERVER,
            1,
            2,
            &nc,
            &ns,
            (Some(b), Some(b)),
            &p
        ));
        assert!(!verify(b"s", SERVER, 1, 2, &nc, &ns, (Some(a), None), &p));
        assert!(!verify(
            b"s",
            SERVER,
            1,
            2,
            &nc,
            &ns,
            (Some(b), Some(a)),
            &p
        ));
    }
}
