//! Fuzzes the transport's read path: length-prefixed framing and the frame
//! decoder (`catga::__private::wire::{decode_stream, decode_frame}`), which must
//! never panic, whatever a peer sends.

#![no_main]

use bytes::Bytes;
use catga::__private::wire::{Frame, FrameError, decode_frame, decode_stream};
use libfuzzer_sys::fuzz_target;

/// The limit before the handshake, and the default limit after it.
const HANDSHAKE_MAX_FRAME: usize = 1024;
const MAX_FRAME: usize = 64 * 1024 * 1024;

fn check_stream(frames: &[Result<Frame, FrameError>]) {
    // decoding stops at the first error
    if let Some(i) = frames.iter().position(Result::is_err) {
        assert_eq!(i, frames.len() - 1, "frames decoded after an error");
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as a byte stream from a peer, before and after the handshake.
    check_stream(&decode_stream(data, HANDSHAKE_MAX_FRAME));
    check_stream(&decode_stream(data, MAX_FRAME));

    // The input as one frame's payload: framing it changes nothing.
    let single = decode_frame(Bytes::copy_from_slice(data));
    let mut framed = (data.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(data);
    let streamed = decode_stream(&framed, usize::MAX);
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0], single);

    // A request's or a response's body lies inside the payload.
    if let Ok(
        Frame::Request { body, .. }
        | Frame::Response {
            result: Ok(body), ..
        },
    ) = &single
    {
        assert!(body.len() <= data.len());
    }
});
