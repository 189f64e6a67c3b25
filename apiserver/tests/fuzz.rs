//! Property tests of everything that decodes client bytes: bodies (JSON, YAML,
//! protobuf), patches, selectors. Whatever arrives, the answer is Ok or an ApiError
//! with a 4xx code: never a panic, never a 5xx.

use proptest::prelude::*;
use serde_json::{Value, json};
use tinykube_apiserver::registry::decode::{self, FieldValidation};
use tinykube_apiserver::registry::patch::{self, PatchType};
use tinykube_apiserver::resources;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9$/._-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("containers".to_string()),
                    Just("name".to_string()),
                    Just("$patch".to_string()),
                    Just("ports".to_string()),
                    Just("labels".to_string()),
                    "[a-z$/]{1,8}".prop_map(String::from)
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn patches_never_panic(target in arb_json(), p in arb_json(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        for kind in [PatchType::Merge, PatchType::Strategic, PatchType::Json] {
            for body in [p.to_string().into_bytes(), raw.clone()] {
                if let Err(e) = patch::apply(kind, &target, &body, "Pod") {
                    prop_assert!(e.code().is_client_error(), "{e}");
                }
            }
        }
    }

    #[test]
    fn admission_of_arbitrary_objects_never_panics(body in arb_json()) {
        // Reviews are answered, never decoded into stored objects.
        for res in resources::RESOURCES.iter().filter(|r| !r.is_review()) {
            let mut obj = body.clone();
            match tinykube_apiserver::registry::prepare::prepare_create(res, &mut obj, Some("default")) {
                Ok(()) => {
                    if let Err(e) = decode::decode(res, obj, None, FieldValidation::Strict) {
                        prop_assert!(e.code().is_client_error(), "{} {e}", res.kind);
                    }
                }
                Err(e) => prop_assert!(e.code().is_client_error(), "{e}"),
            }
        }
    }

    #[test]
    fn protobuf_bodies_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut body = b"k8s\0".to_vec();
        body.extend(&raw);
        for b in [raw.clone(), body] {
            if let Err(e) = tinykube_apiserver::request::protobuf::decode(&b) {
                prop_assert!(e.code().is_client_error(), "{e}");
            }
        }
    }

    #[test]
    fn selectors_never_panic(s in "[a-z=!,() .in/-]{0,40}") {
        let _ = tinykube_api::selector::Selector::parse(&s);
        let _ = tinykube_api::selector::FieldSelector::parse(&s);
    }
}
