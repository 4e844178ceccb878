use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// Runs both sides against each other; the relay accepts `accepted` as the token.
fn run(
    key: &PrivateKey,
    token: &[u8],
    accepted: &[u8],
) -> (
    Result<PublicKey, Refusal>,
    Option<Result<ClientStep, ClientError>>,
) {
    let mut client = ClientHandshake::new(key, token);
    let mut server = ServerHandshake::new();
    if let Err(r) = server.hello(client.hello()) {
        return (Err(r), None);
    }
    let challenge = server
        .challenge()
        .expect("challenge after an accepted Hello");
    let auth = match client.on_frame(challenge) {
        Ok(ClientStep::Send(f)) => f,
        other => return (Err(Refusal::OutOfOrder("no auth")), Some(other)),
    };
    match server.auth(auth, |t| t == accepted) {
        Ok(a) => (Ok(a.key), Some(client.on_frame(Frame::AuthOk))),
        Err(r) => {
            let reply = Frame::error(r.code(), r.to_string());
            (Err(r), Some(client.on_frame(reply)))
        }
    }
}

#[test]
fn honest_client_registers_its_key() {
    let key = PrivateKey::generate();
    let (server, client) = run(&key, b"tok", b"tok");
    assert_eq!(server, Ok(key.public_key()));
    assert_eq!(client, Some(Ok(ClientStep::Authenticated)));
}

#[test]
fn wrong_token_is_refused_and_the_client_sees_the_code() {
    let key = PrivateKey::generate();
    let (server, client) = run(&key, b"tok", b"other");
    assert_eq!(server, Err(Refusal::BadToken));
    let err = client.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken));
    assert_eq!(
        err.to_string(),
        "relay refused: BadToken: mesh token rejected"
    );
}

#[test]
fn server_refusals_by_frame() {
    let key = PrivateKey::generate().public_key();
    let data = Frame::Data {
        key,
        payload: Bytes::from_static(b"x"),
    };
    let hello = |version| Frame::Hello { version, key };
    // (first frame, second frame or None, expected refusal, its code and label)
    type Case = (
        &'static str,
        Frame,
        Option<Frame>,
        Refusal,
        ErrorCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "old version",
            hello(PROTOCOL_VERSION.wrapping_add(1)),
            None,
            Refusal::UnsupportedVersion(PROTOCOL_VERSION.wrapping_add(1)),
            ErrorCode::UnsupportedVersion,
            "version",
        ),
        (
            "data first",
            data.clone(),
            None,
            Refusal::OutOfOrder("expected Hello"),
            ErrorCode::ProtocolViolation,
            "protocol",
        ),
        (
            "data before auth",
            hello(PROTOCOL_VERSION),
            Some(data),
            Refusal::OutOfOrder("data before auth"),
            ErrorCode::ProtocolViolation,
            "protocol",
        ),
        (
            "second hello",
            hello(PROTOCOL_VERSION),
            Some(hello(PROTOCOL_VERSION)),
            Refusal::OutOfOrder("expected Auth"),
            ErrorCode::ProtocolViolation,
            "protocol",
        ),
        (
            "forged proof",
            hello(PROTOCOL_VERSION),
            Some(Frame::Auth {
                mac: [7; 32],
                token: Bytes::from_static(b"tok"),
            }),
            Refusal::BadProof { mac: [7; 32] },
            ErrorCode::BadProof,
            "bad_proof",
        ),
    ];
    for (name, first, second, want, code, label) in cases {
        let mut s = ServerHandshake::new();
        let got = match (s.hello(first), second) {
            (Err(r), _) => r,
            (Ok(_), Some(f)) => {
                assert!(s.challenge().is_some(), "{name}");
                s.auth(f, |_| true).unwrap_err()
            }
            (Ok(_), None) => panic!("{name}: accepted"),
        };
        assert_eq!(got, want, "{name}");
        assert_eq!((got.code(), got.reason()), (code, label), "{name}");
    }
}

#[test]
fn no_challenge_without_hello_and_no_second_use() {
    let mut s = ServerHandshake::new();
    assert_eq!(s.challenge(), None);
    let key = PrivateKey::generate();
    let mut c = ClientHandshake::new(&key, b"t");
    let mut s = ServerHandshake::new();
    s.hello(c.hello()).unwrap();
    let ch = s.challenge().unwrap();
    assert_eq!(s.challenge(), None, "one challenge per connection");
    let Ok(ClientStep::Send(auth)) = c.on_frame(ch.clone()) else {
        panic!("client answers the challenge");
    };
    assert!(matches!(c.on_frame(ch), Err(ClientError::Unexpected(_))));
    assert!(s.auth(auth.clone(), |_| true).is_ok());
    assert_eq!(
        s.auth(auth, |_| true),
        Err(Refusal::OutOfOrder("expected Auth")),
        "a finished handshake accepts nothing more"
    );
}

#[test]
fn client_rejects_frames_out_of_order() {
    let key = PrivateKey::generate();
    let mut c = ClientHandshake::new(&key, b"t");
    assert!(matches!(
        c.on_frame(Frame::AuthOk),
        Err(ClientError::Unexpected(_))
    ));
    let mut c = ClientHandshake::new(&key, b"t");
    let weak = Frame::Challenge {
        ephemeral: [0; 32],
        nonce: [1; 32],
    };
    assert_eq!(c.on_frame(weak), Err(ClientError::Auth(AuthError::WeakKey)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any key and token: the relay registers exactly the client's key when the tokens
    /// match, refuses with BadToken otherwise, and the client learns the same outcome.
    #[test]
    fn both_sides_agree(
        seed in any::<[u8; 32]>(),
        token in proptest::collection::vec(any::<u8>(), 0..64),
        other in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let key = PrivateKey::from_bytes(seed);
        let accepted = if other.is_empty() { token.clone() } else { other.clone() };
        let (server, client) = run(&key, &token, &accepted);
        if accepted == token {
            prop_assert_eq!(server, Ok(key.public_key()));
            prop_assert_eq!(client, Some(Ok(ClientStep::Authenticated)));
        } else {
            prop_assert_eq!(server, Err(Refusal::BadToken));
            prop_assert_eq!(client.and_then(|c| c.err()).and_then(|e| e.code()), Some(ErrorCode::BadToken));
        }
    }

    /// A proof for one challenge never opens another connection (replay), whatever the key.
    #[test]
    fn proof_is_bound_to_its_challenge(seed in any::<[u8; 32]>()) {
        let key = PrivateKey::from_bytes(seed);
        let mut c = ClientHandshake::new(&key, b"t");
        let mut first = ServerHandshake::new();
        first.hello(c.hello()).unwrap();
        let Ok(ClientStep::Send(auth)) = c.on_frame(first.challenge().unwrap()) else {
            return Err(TestCaseError::fail("no auth"));
        };
        let mut second = ServerHandshake::new();
        second.hello(c.hello()).unwrap();
        second.challenge().unwrap();
        let replayed = matches!(second.auth(auth, |_| true), Err(Refusal::BadProof { .. }));
        prop_assert!(replayed, "a proof opened a second connection");
    }

    /// Arbitrary frame sequences never panic and never authenticate without a valid proof.
    #[test]
    fn arbitrary_frames_never_authenticate(
        frames in proptest::collection::vec((0u8..8, any::<[u8; 32]>(), any::<u8>()), 1..6),
    ) {
        let mut s = ServerHandshake::new();
        for (i, (kind, bytes, version)) in frames.into_iter().enumerate() {
            let f = match kind {
                0 => Frame::Hello { version, key: PublicKey(bytes) },
                1 => Frame::Auth { mac: bytes, token: Bytes::from_static(b"t") },
                2 => Frame::Data { key: PublicKey(bytes), payload: Bytes::new() },
                3 => Frame::Ping(u64::from(version)),
                4 => Frame::AuthOk,
                5 => Frame::Challenge { ephemeral: bytes, nonce: bytes },
                6 => Frame::Pong(0),
                _ => Frame::error(ErrorCode::BadToken, "x"),
            };
            let r = if i == 0 { s.hello(f).map(|_| ()) } else {
                let _ = s.challenge();
                s.auth(f, |_| true).map(|_| ())
            };
            prop_assert!(r.is_err() || i == 0, "frame {i} authenticated");
        }
    }
}
