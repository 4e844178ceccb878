//! Round trips and malformed-input handling of the frame codec.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use wirekube_relay_proto::{
    DecodeError, EncodeError, ErrorCode, Frame, FrameHead, MAX_FRAME_LEN, MAX_PACKET_LEN,
    MAX_TOKEN_LEN, PublicKey, peek,
};

fn arb_frame() -> impl Strategy<Value = Frame> {
    let key = any::<[u8; 32]>().prop_map(PublicKey);
    prop_oneof![
        (any::<u8>(), key.clone()).prop_map(|(version, key)| Frame::Hello { version, key }),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(ephemeral, nonce)| Frame::Challenge { ephemeral, nonce }),
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_TOKEN_LEN)
        )
            .prop_map(|(mac, t)| Frame::Auth {
                mac,
                token: Bytes::from(t)
            }),
        Just(Frame::AuthOk),
        (key, proptest::collection::vec(any::<u8>(), 0..2000)).prop_map(|(key, p)| Frame::Data {
            key,
            payload: Bytes::from(p)
        }),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        (1u8..=255, "\\PC{0,100}").prop_map(|(c, m)| Frame::error(ErrorCode::from_u8(c), m)),
    ]
}

fn raw(ty: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(1 + body.len() as u32);
    b.put_u8(ty);
    b.put_slice(body);
    b
}

proptest! {
    #[test]
    fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf).unwrap();
        }
        for f in &frames {
            prop_assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f.clone()));
        }
        prop_assert!(buf.is_empty());
    }

    /// Feeding a valid stream in arbitrary chunks yields the same frames.
    #[test]
    fn split_anywhere(f in arb_frame(), cut in any::<prop::sample::Index>()) {
        let enc = f.to_bytes().unwrap();
        let cut = cut.index(enc.len());
        let mut buf = BytesMut::from(&enc[..cut]);
        if cut < enc.len() {
            prop_assert_eq!(Frame::decode(&mut buf).unwrap(), None);
            prop_assert_eq!(buf.len(), cut);
        }
        buf.extend_from_slice(&enc[cut..]);
        prop_assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f));
    }

    /// Arbitrary bytes never panic: each call yields a frame, "need more", or a typed error.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
    }

    /// Garbage behind a small valid-looking header is still a typed error or a frame.
    #[test]
    fn typed_body_garbage(ty in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = raw(ty, &body);
        let _ = Frame::decode(&mut buf);
    }

    /// The zero-copy `peek` used by the relay's forwarding path agrees with `decode`:
    /// same errors, Data exactly when decode yields Data of the same length.
    #[test]
    fn peek_agrees_with_decode(ty in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
        let full = raw(ty, &body);
        let cut = cut.index(full.len() + 1);
        let mut buf = BytesMut::from(&full[..cut]);
        let head = peek(&buf);
        let before = buf.len();
        match (head, Frame::decode(&mut buf)) {
            (Ok(FrameHead::Incomplete { need }), Ok(None)) => prop_assert!(need > cut),
            (Ok(FrameHead::Data { len }), Ok(Some(Frame::Data { .. }))) => prop_assert_eq!(len, before - buf.len()),
            (Ok(FrameHead::Other), Ok(Some(f))) => {
                let is_data = matches!(f, Frame::Data { .. });
                prop_assert!(!is_data);
            }
            (Ok(FrameHead::Other), Err(_)) => {}
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (h, d) => prop_assert!(false, "peek {:?} vs decode {:?}", h, d),
        }
    }
}

#[test]
fn oversized_length_rejected_before_allocation() {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::MAX);
    let cap = buf.capacity();
    assert_eq!(
        Frame::decode(&mut buf),
        Err(DecodeError::FrameTooLarge {
            len: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
    assert_eq!(
        buf.capacity(),
        cap,
        "decoder must not grow the buffer for a rejected frame"
    );
}

#[test]
fn every_malformed_input_is_a_typed_error() {
    let cases: Vec<(BytesMut, DecodeError)> = vec![
        (BytesMut::from(&[0u8, 0, 0, 0][..]), DecodeError::EmptyFrame),
        (raw(0, b""), DecodeError::UnknownType(0)),
        (raw(200, b"xx"), DecodeError::UnknownType(200)),
        (
            raw(1, &[1; 32]),
            DecodeError::BadLength {
                frame: "hello",
                len: 32,
            },
        ),
        (
            raw(1, &[1; 34]),
            DecodeError::BadLength {
                frame: "hello",
                len: 34,
            },
        ),
        (
            raw(2, &[1; 63]),
            DecodeError::BadLength {
                frame: "challenge",
                len: 63,
            },
        ),
        (
            raw(3, &[1; 31]),
            DecodeError::BadLength {
                frame: "auth",
                len: 31,
            },
        ),
        (
            raw(3, &vec![1; 32 + MAX_TOKEN_LEN + 1]),
            DecodeError::TokenTooLong(MAX_TOKEN_LEN + 1),
        ),
        (
            raw(4, &[0]),
            DecodeError::BadLength {
                frame: "auth-ok",
                len: 1,
            },
        ),
        (
            raw(5, &[1; 31]),
            DecodeError::BadLength {
                frame: "data",
                len: 31,
            },
        ),
        (
            raw(6, &[1; 7]),
            DecodeError::BadLength {
                frame: "ping",
                len: 7,
            },
        ),
        (
            raw(7, &[1; 9]),
            DecodeError::BadLength {
                frame: "pong",
                len: 9,
            },
        ),
        (
            raw(8, b""),
            DecodeError::BadLength {
                frame: "error",
                len: 0,
            },
        ),
        (raw(8, &[2, 0xff, 0xfe]), DecodeError::MessageNotUtf8),
        (raw(8, &vec![b'a'; 514]), DecodeError::MessageTooLong(513)),
    ];
    for (mut buf, want) in cases {
        assert_eq!(Frame::decode(&mut buf), Err(want));
    }
}

#[test]
fn encode_limits_are_typed_errors() {
    let big = Frame::Data {
        key: PublicKey([0; 32]),
        payload: Bytes::from(vec![0; MAX_PACKET_LEN + 1]),
    };
    let mut buf = BytesMut::new();
    assert_eq!(
        big.encode(&mut buf),
        Err(EncodeError::PacketTooLarge(MAX_PACKET_LEN + 1))
    );
    assert!(buf.is_empty());
    let tok = Frame::Auth {
        mac: [0; 32],
        token: Bytes::from(vec![0; MAX_TOKEN_LEN + 1]),
    };
    assert_eq!(
        tok.encode(&mut buf),
        Err(EncodeError::TokenTooLong(MAX_TOKEN_LEN + 1))
    );
    let msg = Frame::Error {
        code: ErrorCode::BadToken,
        message: "x".repeat(600),
    };
    assert_eq!(msg.encode(&mut buf), Err(EncodeError::MessageTooLong(600)));
    // The constructor truncates instead, at a char boundary.
    let Frame::Error { message, .. } = Frame::error(ErrorCode::BadToken, "é".repeat(400)) else {
        unreachable!()
    };
    assert!(message.len() <= 512 && message.chars().all(|c| c == 'é'));
}

#[test]
fn max_size_packet_round_trips() {
    let f = Frame::Data {
        key: PublicKey([7; 32]),
        payload: Bytes::from(vec![9; MAX_PACKET_LEN]),
    };
    let mut buf = BytesMut::new();
    f.encode(&mut buf).unwrap();
    assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f));
}

#[test]
fn unknown_error_code_is_preserved() {
    let f = Frame::error(ErrorCode::Other(77), "future");
    let mut buf = BytesMut::new();
    f.encode(&mut buf).unwrap();
    assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f));
    for c in 0..=255u8 {
        assert_eq!(ErrorCode::from_u8(c).to_u8(), c);
        assert_eq!(ErrorCode::from_u8(c).is_fatal(), c != 12);
    }
    assert_eq!(ErrorCode::from_u8(11), ErrorCode::Replayed);
    assert_eq!(ErrorCode::from_u8(13), ErrorCode::IdleTimeout);
}
