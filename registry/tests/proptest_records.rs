//! Properties of the record encoding: every accepted record re-serialises and parses to itself,
//! acceptance matches the schema's rules exactly, and the documented limits hold at their edges.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use peerkeep_registry::{
    ClusterName, Endpoint, EndpointName, MAX_RECORD_BYTES, NodeId, NodeRecord, NodeState,
    RecordError, Slot,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const NAME: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,62}";

fn node_id() -> impl Strategy<Value = NodeId> {
    NAME.prop_map(|s| s.parse().expect("the regex is the name syntax"))
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (any::<IpAddr>(), 1u16..=65535)
        .prop_map(|(ip, port)| Endpoint::new(SocketAddr::new(ip, port)).expect("non-zero port"))
}

fn state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Starting),
        Just(NodeState::Ready),
        Just(NodeState::Draining)
    ]
}

fn record() -> impl Strategy<Value = NodeRecord> {
    (
        node_id(),
        state(),
        prop::collection::btree_map(
            NAME.prop_map(|s| s.parse::<EndpointName>().expect("name syntax")),
            endpoint(),
            0..4,
        ),
        1u32..=65535,
        ".{0,40}",
        ".{0,20}",
        prop::collection::btree_map(".{0,20}", ".{0,60}", 0..4),
    )
        .prop_map(
            |(id, state, endpoints, slot, instance, version, labels)| NodeRecord {
                id,
                state,
                endpoints,
                slot: Slot::new(slot).expect("in range"),
                instance,
                version,
                started_at: "2026-11-26T10:00:00Z".to_owned(),
                labels,
            },
        )
}

/// A JSON field value that is either valid (`true`) or breaks one rule (`false`).
fn field<T: std::fmt::Debug + Clone + 'static>(
    valid: impl Strategy<Value = T> + 'static,
    invalid: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = (bool, T)> {
    prop_oneof![
        3 => valid.prop_map(|v| (true, v)),
        1 => invalid.prop_map(|v| (false, v)),
    ]
}

fn raw_record() -> impl Strategy<Value = (bool, String, Value)> {
    let bad_name = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9]{64,70}",
        "[-._][a-z]{0,5}",
        "[a-z]{1,5}[ /:#\n][a-z]{0,5}",
    ];
    let bad_endpoint = prop_oneof![
        Just("10.0.0.1:0".to_owned()),
        Just("10.0.0.1".to_owned()),
        Just("example.com:80".to_owned()),
        Just("10.0.0.1:65536".to_owned()),
        Just("[fe80::1%2]:80".to_owned()),
    ];
    (
        field(NAME, bad_name.clone()),
        any::<bool>(),
        field(NAME, bad_name),
        field(endpoint().prop_map(|e| e.to_string()), bad_endpoint),
        field(
            prop_oneof![Just("starting"), Just("ready"), Just("draining")],
            prop_oneof![Just("sleeping"), Just("Ready"), Just("")],
        ),
        field(1i64..=65535, prop_oneof![Just(0i64), Just(-1), Just(65536)]),
    )
        .prop_map(|(id, key_matches, ep_name, ep, state, slot)| {
            let key = if key_matches {
                id.1.clone()
            } else {
                format!("other-{}", id.1)
            };
            let ok = id.0 && key_matches && ep_name.0 && ep.0 && state.0 && slot.0;
            let endpoints: serde_json::Map<String, Value> =
                std::iter::once((ep_name.1, Value::String(ep.1))).collect();
            let value = json!({
                "id": id.1,
                "state": state.1,
                "endpoints": endpoints,
                "slot": slot.1,
                "instance": "i",
                "unknown_future_field": [1, 2, 3],
            });
            (ok, key, value)
        })
}

proptest! {
    #[test]
    fn encoded_records_parse_to_themselves(r in record()) {
        match r.encode() {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= MAX_RECORD_BYTES);
                prop_assert_eq!(NodeRecord::parse(r.id.as_str(), &bytes), Ok(r));
            }
            Err(RecordError::TooLarge { size_bytes }) => {
                prop_assert!(size_bytes > MAX_RECORD_BYTES);
            }
            Err(e) => prop_assert!(false, "unexpected encode error {e}"),
        }
    }

    #[test]
    fn acceptance_follows_the_rules_and_accepted_records_round_trip(
        (ok, key, value) in raw_record()
    ) {
        let bytes = serde_json::to_vec(&value).expect("JSON");
        let parsed = NodeRecord::parse(&key, &bytes);
        prop_assert_eq!(parsed.is_ok(), ok, "{} under key {:?}: {:?}", value, key, parsed);
        if let Ok(r) = parsed {
            let again = r.encode().expect("an accepted record encodes");
            prop_assert_eq!(NodeRecord::parse(&key, &again), Ok(r));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(key in ".{0,70}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = NodeRecord::parse(&key, &bytes);
    }
}

#[test]
fn names_are_accepted_up_to_63_bytes() {
    let ok = "a".repeat(63);
    let long = "a".repeat(64);
    assert!(ok.parse::<NodeId>().is_ok());
    assert!(ok.parse::<ClusterName>().is_ok());
    assert!(ok.parse::<EndpointName>().is_ok());
    assert!(long.parse::<NodeId>().is_err());
    assert!(long.parse::<ClusterName>().is_err());
    assert!(long.parse::<EndpointName>().is_err());
    let rec = |id: &str| {
        json!({"id": id, "state": "ready", "endpoints": {}, "slot": 1, "instance": "i"}).to_string()
    };
    assert!(NodeRecord::parse(&ok, rec(&ok).as_bytes()).is_ok());
    assert!(NodeRecord::parse(&long, rec(&long).as_bytes()).is_err());
}

#[test]
fn ports_1_and_65535_are_accepted_and_0_is_not() {
    for (text, accepted) in [
        ("10.0.0.1:1", true),
        ("10.0.0.1:65535", true),
        ("[2001:db8::1]:65535", true),
        ("10.0.0.1:0", false),
        ("[2001:db8::1]:0", false),
    ] {
        assert_eq!(text.parse::<Endpoint>().is_ok(), accepted, "{text}");
        let value = json!({
            "id": "n", "state": "ready", "endpoints": { "p2p": text }, "slot": 1, "instance": "i",
        });
        let parsed = NodeRecord::parse("n", value.to_string().as_bytes());
        assert_eq!(parsed.is_ok(), accepted, "{text}: {parsed:?}");
    }
}

#[test]
fn records_of_exactly_4096_bytes_are_accepted_and_4097_are_not() {
    let with_pad = |pad: usize| {
        let mut labels = BTreeMap::new();
        labels.insert("pad".to_owned(), "x".repeat(pad));
        NodeRecord {
            id: "n".parse().expect("id"),
            state: NodeState::Ready,
            endpoints: BTreeMap::new(),
            slot: Slot::new(1).expect("slot"),
            instance: "i".to_owned(),
            version: String::new(),
            started_at: String::new(),
            labels,
        }
    };
    let base = serde_json::to_vec(&with_pad(0)).expect("JSON").len();
    let exact = with_pad(MAX_RECORD_BYTES - base);
    let bytes = exact.encode().expect("4096 bytes is within the limit");
    assert_eq!(bytes.len(), MAX_RECORD_BYTES);
    assert_eq!(NodeRecord::parse("n", &bytes), Ok(exact));

    let over = with_pad(MAX_RECORD_BYTES - base + 1);
    assert!(matches!(
        over.encode(),
        Err(RecordError::TooLarge { size_bytes: 4097 })
    ));
    let bytes = serde_json::to_vec(&over).expect("JSON");
    assert_eq!(bytes.len(), MAX_RECORD_BYTES + 1);
    assert!(matches!(
        NodeRecord::parse("n", &bytes),
        Err(RecordError::TooLarge { size_bytes: 4097 })
    ));
}
