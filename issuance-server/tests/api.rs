//! HTTP-level tests of every endpoint and every refusal, each run on SQLite and on PostgreSQL
//! (`both_backends!`), through the real router.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine;
use common::{application, resident_id, with_check_character, Office};
use issuance_server::keys::RingSigner;
use serde_json::{json, Value};
use shared_crypto::model::{
    attribute_digest, AttributeId, CardBlockBody, CredentialBody, KeyCertificate, Role, Service,
    ServiceRulesBody, StatusDeltaBody, StatusListBody, TrustBundle, VoucherBody,
};
use shared_crypto::status_list::{IndexSetView, StatusListView};
use shared_crypto::{PublicKey, Signed};
use sqlx::Row;

both_backends!(
    authentication_and_roles,
    users,
    application_validation,
    application_lifecycle_and_four_eyes,
    duplicate_person_and_change,
    personalization_flow,
    personalization_refusals,
    replacement_revokes_the_old_card,
    revocation_and_status_list,
    vouchers_and_block_orders,
    distribution,
    terminals_and_logs,
    audit_and_stats,
    malformed_requests,
    openapi_lists_only_routed_operations,
    batch_reissue,
    refusals_at_the_limits,
);

fn issuer_key(o: &Office) -> PublicKey {
    o.state.keys.issuer.public_key()
}

/// A GET with `If-None-Match: etag`.
fn get_if_none_match(path: &str, etag: &str) -> Request<Body> {
    Request::get(path)
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .unwrap()
}

async fn authentication_and_roles(o: Office) {
    let s = o.staff().await;
    // No token, a malformed header, an unknown token.
    o.get("/api/v1/applications", None)
        .await
        .refused(401, "unauthorized");
    let r = o
        .send(
            Request::get("/api/v1/applications")
                .header(header::AUTHORIZATION, "Basic abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    r.refused(401, "unauthorized");
    o.get("/api/v1/applications", Some("00ff"))
        .await
        .refused(401, "invalid_token");
    // Wrong role: an auditor cannot read applications, a clerk cannot read the audit log.
    o.get("/api/v1/applications", Some(&s.auditor))
        .await
        .refused(403, "wrong_role");
    o.get("/api/v1/audit", Some(&s.clerk))
        .await
        .refused(403, "wrong_role");
    // Who am I.
    let me = o.get("/api/v1/me", Some(&s.clerk)).await.json();
    assert_eq!(me["role"], "clerk");
    assert_eq!(me["name"], "clerk");
}

async fn users(o: Office) {
    let admin = o.admin.clone();
    let clerk = o.user("c1", "clerk").await;
    o.post(
        "/api/v1/users",
        &admin,
        json!({"name": "c1", "role": "clerk"}),
    )
    .await
    .refused(409, "duplicate_user");
    o.post(
        "/api/v1/users",
        &admin,
        json!({"name": "bad name", "role": "clerk"}),
    )
    .await
    .refused(422, "invalid_user_name");
    o.post(
        "/api/v1/users",
        &admin,
        json!({"name": "x", "role": "king"}),
    )
    .await
    .refused(422, "invalid_body");
    o.post(
        "/api/v1/users",
        &clerk,
        json!({"name": "y", "role": "admin"}),
    )
    .await
    .refused(403, "wrong_role");
    let list = o.get("/api/v1/users", Some(&admin)).await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "c1"]);
    assert!(list[0].get("token").is_none(), "tokens are never listed");
    let id = list[1]["id"].as_i64().unwrap();
    let admin_id = list[0]["id"].as_i64().unwrap();
    o.post(
        &format!("/api/v1/users/{admin_id}/disable"),
        &admin,
        json!({}),
    )
    .await
    .refused(409, "cannot_disable_self");
    o.post("/api/v1/users/999/disable", &admin, json!({}))
        .await
        .refused(404, "unknown_user");
    let r = o
        .post(&format!("/api/v1/users/{id}/disable"), &admin, json!({}))
        .await;
    assert_eq!(r.json()["active"], false);
    // The disabled clerk's token no longer works.
    o.get("/api/v1/me", Some(&clerk))
        .await
        .refused(401, "invalid_token");
    // Tokens are stored hashed only.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM users WHERE name = 'c1'")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(hex::encode(&stored), clerk);
}

async fn application_validation(o: Office) {
    let s = o.staff().await;
    let good_id = resident_id(1);
    let wrong_check = if good_id.ends_with('1') { "2" } else { "1" };
    let bad_check = format!("{}{wrong_check}", &good_id[..17]);
    let cases = [
        (
            "resident_id",
            json!(bad_check),
            "resident_id_check_character",
        ),
        (
            "resident_id",
            json!("11010519800101001"),
            "resident_id_length",
        ),
        (
            "resident_id",
            json!("11010519800230001X"),
            "resident_id_date",
        ),
        // A lower-case x is not the check character X; a letter among the digits; a full-width
        // digit (one character, three bytes).
        (
            "resident_id",
            json!("11010519800101001x"),
            "resident_id_character",
        ),
        (
            "resident_id",
            json!("1101051980O101001X"),
            "resident_id_character",
        ),
        (
            "resident_id",
            json!("１10105198001010011"),
            "resident_id_character",
        ),
        // Region codes start with 1 to 8 (GB/T 2260); these IDs are right in every other way.
        (
            "resident_id",
            json!(with_check_character("01010519800101001")),
            "resident_id_region",
        ),
        (
            "resident_id",
            json!(with_check_character("91010519800101001")),
            "resident_id_region",
        ),
        ("category", json!(9), "invalid_category"),
        ("level", json!(0), "invalid_level"),
        ("region", json!(1101), "invalid_region"),
        ("region", json!(99_999), "invalid_region"),
        ("region", json!(1_000_000), "invalid_region"),
        ("birth_year", json!(1990), "birth_year_mismatch"),
        (
            "entitlements",
            json!(["free_transit", "free_beer"]),
            "invalid_entitlement",
        ),
        ("name", json!(""), "invalid_name"),
        ("photo", json!("not base64!"), "invalid_photo"),
    ];
    for (field, value, code) in cases {
        let mut app = application(1);
        app[field] = value;
        o.post("/api/v1/applications", &s.clerk, app)
            .await
            .refused(422, code);
    }
    // The search endpoint checks the ID with the same rules.
    for (id, code) in [
        ("11010519800101001x".to_owned(), "resident_id_character"),
        (
            with_check_character("91010519800101001"),
            "resident_id_region",
        ),
    ] {
        o.post(
            "/api/v1/applications/search",
            &s.approver,
            json!({ "resident_id": id }),
        )
        .await
        .refused(422, code);
    }
    // The edges of the region range pass (the office does not check that a code exists).
    for (n, region) in [(20, 100_000), (21, 999_999)] {
        let mut app = application(n);
        app["region"] = json!(region);
        let r = o.post("/api/v1/applications", &s.clerk, app).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        assert_eq!(r.json()["region"], region);
    }
    // Nothing refused was stored.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applications")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
    // The first check digit that is right passes.
    assert_eq!(resident_id(1).len(), 18);
    let mut app = application(1);
    app["photo"] = json!(base64::engine::general_purpose::STANDARD.encode(b"\xFF\xD8\xFFjpeg"));
    let r = o.post("/api/v1/applications", &s.clerk, app).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let a = r.json();
    assert_eq!(a["state"], "submitted");
    assert_eq!(a["certificate_number"], format!("{}12", resident_id(1)));
    assert_eq!(a["birth_year"], 1980);
    let id = a["id"].as_i64().unwrap();
    let photo = o
        .get(
            &format!("/api/v1/applications/{id}/photo"),
            Some(&s.approver),
        )
        .await;
    assert_eq!(photo.bytes, b"\xFF\xD8\xFFjpeg");
    assert_eq!(photo.headers[header::CONTENT_TYPE], "image/jpeg");
    // Personal data is encrypted at rest: neither the name nor the ID is in the row.
    let row: (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT name_enc, resident_id_enc FROM applications WHERE id = $1")
            .bind(id)
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
    let needle = resident_id(1);
    for blob in [&row.0, &row.1] {
        assert!(!blob.windows(needle.len()).any(|w| w == needle.as_bytes()));
        assert!(!blob.windows(9).any(|w| w == "持证人".as_bytes()));
    }
    let id2 = o.approved(&s, application(2)).await;
    o.get(&format!("/api/v1/applications/{id2}/photo"), Some(&s.clerk))
        .await
        .refused(404, "no_photo");
}

async fn application_lifecycle_and_four_eyes(o: Office) {
    let s = o.staff().await;
    let r = o
        .post("/api/v1/applications", &s.clerk, application(3))
        .await;
    let id = r.json()["id"].as_i64().unwrap();
    let approve = format!("/api/v1/applications/{id}/approve");
    // A clerk may not approve; an admin who submitted may not approve their own.
    o.post(&approve, &s.clerk, json!({}))
        .await
        .refused(403, "wrong_role");
    let r = o
        .post("/api/v1/applications", &s.admin, application(4))
        .await;
    let own = r.json()["id"].as_i64().unwrap();
    o.post(
        &format!("/api/v1/applications/{own}/approve"),
        &s.admin,
        json!({}),
    )
    .await
    .refused(403, "same_user");
    // Approval with and without a body; a repeat by the same approver answers the same.
    let r = o
        .call(Method::POST, &approve, Some(&s.approver), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "approved");
    assert_eq!(r.json()["decided_by"], "approver");
    let again = o.post(&approve, &s.approver, json!({"note": "ok"})).await;
    assert_eq!(again.status, StatusCode::OK);
    o.post(&approve, &s.approver2, json!({}))
        .await
        .refused(409, "already_decided");
    o.post(
        &format!("/api/v1/applications/{id}/reject"),
        &s.approver2,
        json!({"reason": "x"}),
    )
    .await
    .refused(409, "already_decided");
    // Rejection needs a reason.
    let reject = format!("/api/v1/applications/{own}/reject");
    o.post(&reject, &s.approver, json!({}))
        .await
        .refused(422, "reason_required");
    o.post(&reject, &s.approver, json!({"reason": "x".repeat(501)}))
        .await
        .refused(422, "invalid_note");
    let r = o
        .post(&reject, &s.approver, json!({"reason": "documents missing"}))
        .await;
    assert_eq!(r.json()["state"], "rejected");
    assert_eq!(r.json()["decision_note"], "documents missing");
    // Unknown ids and bad paths.
    o.post("/api/v1/applications/999/approve", &s.approver, json!({}))
        .await
        .refused(404, "unknown_application");
    o.get("/api/v1/applications/999", Some(&s.clerk))
        .await
        .refused(404, "unknown_application");
    o.get("/api/v1/applications/abc", Some(&s.clerk))
        .await
        .refused(400, "invalid_path");
    // Listing and search.
    let approved = o
        .get("/api/v1/applications?state=approved", Some(&s.clerk))
        .await
        .json();
    assert_eq!(approved.as_array().unwrap().len(), 1);
    assert_eq!(approved[0]["id"], id);
    let all = o
        .get("/api/v1/applications?limit=1&after=0", Some(&s.clerk))
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 1);
    o.get("/api/v1/applications?state=lost", Some(&s.clerk))
        .await
        .refused(400, "invalid_query");
    o.get("/api/v1/applications?limit=x", Some(&s.clerk))
        .await
        .refused(400, "invalid_query");
    let found = o
        .post(
            "/api/v1/applications/search",
            &s.approver,
            json!({"resident_id": resident_id(3)}),
        )
        .await
        .json();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["name"], "持证人 3");
    let none = o
        .post(
            "/api/v1/applications/search",
            &s.approver,
            json!({"resident_id": resident_id(99)}),
        )
        .await
        .json();
    assert_eq!(none, json!([]));
    o.post(
        "/api/v1/applications/search",
        &s.approver,
        json!({"resident_id": "123"}),
    )
    .await
    .refused(422, "resident_id_length");
}

async fn duplicate_person_and_change(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(5)).await;
    // Same person again while the first is in progress.
    o.post("/api/v1/applications", &s.clerk, application(5))
        .await
        .refused(409, "duplicate_person");
    // A change before the certificate is active is refused.
    let mut change = application(5);
    change["level"] = json!(1);
    change["supersedes"] = json!(id);
    o.post("/api/v1/applications", &s.clerk, change.clone())
        .await
        .refused(409, "supersedes_not_active");
    let (_, _) = o.personalize(&s, id).await;
    // Still one certificate per person.
    o.post("/api/v1/applications", &s.clerk, application(5))
        .await
        .refused(409, "duplicate_person");
    // A change for another person's certificate.
    let mut other = application(6);
    other["supersedes"] = json!(id);
    o.post("/api/v1/applications", &s.clerk, other)
        .await
        .refused(422, "supersedes_other_person");
    let mut missing = application(5);
    missing["supersedes"] = json!(12345);
    o.post("/api/v1/applications", &s.clerk, missing)
        .await
        .refused(404, "unknown_application");
    // The change itself.
    let r = o
        .post("/api/v1/applications", &s.clerk, change.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let new_id = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["kind"], "change");
    o.post("/api/v1/applications", &s.clerk, change)
        .await
        .refused(409, "duplicate_person");
    o.post(
        &format!("/api/v1/applications/{new_id}/approve"),
        &s.approver2,
        json!({}),
    )
    .await;
    let old_card = o
        .get(&format!("/api/v1/applications/{id}"), Some(&s.clerk))
        .await
        .json()["active_card"]
        .as_str()
        .unwrap()
        .to_owned();
    let (job, _) = o.personalize(&s, new_id).await;
    assert_eq!(job["state"], "completed");
    // The old certificate is superseded and its card revoked; the new one is active with
    // level 1 in its certificate number.
    let old = o
        .get(&format!("/api/v1/applications/{id}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(old["state"], "superseded");
    assert_eq!(old["active_card"], Value::Null);
    let card = o
        .get(&format!("/api/v1/cards/{old_card}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(card["state"], "revoked");
    assert_eq!(card["revoke_reason"], "replaced");
    let new = o
        .get(&format!("/api/v1/applications/{new_id}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(new["state"], "active");
    assert!(new["certificate_number"].as_str().unwrap().ends_with("11"));
    let actives: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cards WHERE state = 'active'")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(actives, 1);
}

async fn personalization_flow(o: Office) {
    let s = o.staff().await;
    let mut app = application(7);
    app["photo"] = json!(base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nxx"));
    let id = o.approved(&s, app).await;
    let body = json!({"application_id": id, "card_div_data": "00112233445566778899"});
    let r = o
        .post("/api/v1/personalization-jobs", &s.clerk, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let job = r.json();
    let jid = job["job_id"].as_i64().unwrap();
    assert_eq!(job["state"], "created");
    assert_eq!(job["scp03"]["kvn"], 0x30);
    // The SCP03 keys are the diversified ones.
    let div: [u8; 10] = hex::decode("00112233445566778899")
        .unwrap()
        .try_into()
        .unwrap();
    let keys = o.state.keys.card_keys(&div);
    assert_eq!(job["scp03"]["enc"], hex::encode(keys.enc));
    assert_eq!(job["scp03"]["mac"], hex::encode(keys.mac));
    assert_eq!(job["scp03"]["dek"], hex::encode(keys.dek));
    assert_eq!(
        job["root_key"],
        hex::encode(o.state.keys.root.public_key().to_sec1())
    );
    assert_eq!(job["initial_points"], 100, "welfare_points entitlement");
    let attrs = job["attributes"].as_array().unwrap();
    let ids: Vec<u64> = attrs
        .iter()
        .map(|a| a["attribute"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(
        hex::decode(attrs[0]["value"].as_str().unwrap()).unwrap(),
        "持证人 7".as_bytes()
    );
    // Asking again resumes the same job.
    let again = o.post("/api/v1/personalization-jobs", &s.clerk, body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), job);
    let shown = o
        .get(
            &format!("/api/v1/personalization-jobs/{jid}"),
            Some(&s.clerk),
        )
        .await
        .json();
    assert_eq!(shown, job);

    // The card key: the credential verifies, binds the job's values, and repeats.
    let (card, _) = RingSigner::generate().unwrap();
    let pk = hex::encode(card.public_key().to_sec1());
    let url = format!("/api/v1/personalization-jobs/{jid}/card-key");
    let r = o.post(&url, &s.clerk, json!({"card_public_key": pk})).await;
    assert_eq!(r.status, StatusCode::OK);
    let cred_hex = r.json()["credential"].as_str().unwrap().to_owned();
    let wire = hex::decode(&cred_hex).unwrap();
    let signed = Signed::decode(&wire).unwrap();
    let body: CredentialBody<'_> = signed.open(&[], &issuer_key(&o)).unwrap();
    assert_eq!(hex::encode(body.card_serial), job["card_serial"]);
    assert_eq!(
        u64::from(body.status_index),
        job["status_index"].as_u64().unwrap()
    );
    assert_eq!(body.valid_until, job["valid_until"].as_u64().unwrap());
    assert_eq!(body.card_key.0, card.public_key().to_sec1());
    body.check_structure().unwrap();
    for a in attrs {
        let id = AttributeId::try_from(a["attribute"].as_u64().unwrap() as u8).unwrap();
        let salt: [u8; 16] = hex::decode(a["salt"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let value = hex::decode(a["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            body.digest_of(id),
            Some(attribute_digest(&salt, id, &value))
        );
    }
    let r = o.post(&url, &s.clerk, json!({"card_public_key": pk})).await;
    assert_eq!(r.json()["credential"], cred_hex);
    let job_now = o
        .get(
            &format!("/api/v1/personalization-jobs/{jid}"),
            Some(&s.clerk),
        )
        .await
        .json();
    assert_eq!(job_now["state"], "key_bound");

    // Confirm: completed, repeatable; the card is active with this credential.
    let confirm = format!("/api/v1/personalization-jobs/{jid}/confirm");
    let r = o
        .post(&confirm, &s.clerk, json!({"card_public_key": pk}))
        .await;
    assert_eq!(r.json()["state"], "completed");
    let r2 = o
        .post(&confirm, &s.clerk, json!({"card_public_key": pk}))
        .await;
    assert_eq!(r2.json(), r.json());
    let serial = job["card_serial"].as_str().unwrap();
    let c = o
        .get(&format!("/api/v1/cards/{serial}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(c["state"], "active");
    assert_eq!(c["credential"], cred_hex);
    assert_eq!(c["application_id"], id);
    let a = o
        .get(&format!("/api/v1/applications/{id}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(a["state"], "active");
    assert_eq!(a["active_card"], serial);
    // The same key once more after completion still answers; another key is refused.
    let r = o.post(&url, &s.clerk, json!({"card_public_key": pk})).await;
    assert_eq!(r.json()["credential"], cred_hex);
    let (other, _) = RingSigner::generate().unwrap();
    o.post(
        &url,
        &s.clerk,
        json!({"card_public_key": hex::encode(other.public_key().to_sec1())}),
    )
    .await
    .refused(409, "job_completed");
}

async fn personalization_refusals(o: Office) {
    let s = o.staff().await;
    let r = o
        .post("/api/v1/applications", &s.clerk, application(8))
        .await;
    let submitted = r.json()["id"].as_i64().unwrap();
    let jobs = "/api/v1/personalization-jobs";
    o.post(
        jobs,
        &s.clerk,
        json!({"application_id": submitted, "card_div_data": "00112233445566778899"}),
    )
    .await
    .refused(409, "application_not_approved");
    o.post(
        jobs,
        &s.clerk,
        json!({"application_id": 999, "card_div_data": "00112233445566778899"}),
    )
    .await
    .refused(404, "unknown_application");
    let id = o.approved(&s, application(9)).await;
    o.post(
        jobs,
        &s.clerk,
        json!({"application_id": id, "card_div_data": "0011"}),
    )
    .await
    .refused(422, "invalid_card_div_data");
    o.post(
        jobs,
        &s.approver,
        json!({"application_id": id, "card_div_data": "00112233445566778899"}),
    )
    .await
    .refused(403, "wrong_role");
    o.get("/api/v1/personalization-jobs/4242", Some(&s.clerk))
        .await
        .refused(404, "unknown_job");
    o.post(
        "/api/v1/personalization-jobs/4242/card-key",
        &s.clerk,
        json!({"card_public_key": "02"}),
    )
    .await
    .refused(422, "invalid_card_public_key");
    let r = o
        .post(
            jobs,
            &s.clerk,
            json!({"application_id": id, "card_div_data": "00112233445566778899"}),
        )
        .await;
    let job = r.json();
    let jid = job["job_id"].as_i64().unwrap();
    let url = format!("/api/v1/personalization-jobs/{jid}");
    // Not a point on the curve; confirm before a key; unknown job with a good key.
    let mut bad = [0x02u8; 33];
    bad[1..].copy_from_slice(&[0xFF; 32]);
    o.post(
        &format!("{url}/card-key"),
        &s.clerk,
        json!({"card_public_key": hex::encode(bad)}),
    )
    .await
    .refused(422, "invalid_card_public_key");
    let (k1, _) = RingSigner::generate().unwrap();
    let pk1 = hex::encode(k1.public_key().to_sec1());
    o.post(
        &format!("{url}/confirm"),
        &s.clerk,
        json!({"card_public_key": pk1}),
    )
    .await
    .refused(409, "no_card_key");
    o.post(
        "/api/v1/personalization-jobs/4242/card-key",
        &s.clerk,
        json!({"card_public_key": pk1}),
    )
    .await
    .refused(404, "unknown_job");
    o.post(
        "/api/v1/personalization-jobs/4242/confirm",
        &s.clerk,
        json!({"card_public_key": pk1}),
    )
    .await
    .refused(404, "unknown_job");
    // A card restarted from BLANK binds another key: the credential is replaced.
    let c1 = o
        .post(
            &format!("{url}/card-key"),
            &s.clerk,
            json!({"card_public_key": pk1}),
        )
        .await
        .json();
    let (k2, _) = RingSigner::generate().unwrap();
    let pk2 = hex::encode(k2.public_key().to_sec1());
    let c2 = o
        .post(
            &format!("{url}/card-key"),
            &s.clerk,
            json!({"card_public_key": pk2}),
        )
        .await
        .json();
    assert_ne!(c1["credential"], c2["credential"]);
    o.post(
        &format!("{url}/confirm"),
        &s.clerk,
        json!({"card_public_key": pk1}),
    )
    .await
    .refused(409, "key_mismatch");
    // Another blank card (new div data) restarts the job: same serial and index, new keys.
    let r = o
        .post(
            jobs,
            &s.clerk,
            json!({"application_id": id, "card_div_data": "99887766554433221100"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let restarted = r.json();
    assert_eq!(restarted["job_id"], jid);
    assert_eq!(restarted["state"], "created");
    assert_eq!(restarted["card_serial"], job["card_serial"]);
    assert_eq!(restarted["status_index"], job["status_index"]);
    assert_ne!(restarted["scp03"], job["scp03"]);
    o.post(
        &format!("{url}/confirm"),
        &s.clerk,
        json!({"card_public_key": pk2}),
    )
    .await
    .refused(409, "no_card_key");
    o.post(
        &format!("{url}/card-key"),
        &s.clerk,
        json!({"card_public_key": pk2}),
    )
    .await;
    o.post(
        &format!("{url}/confirm"),
        &s.clerk,
        json!({"card_public_key": pk2}),
    )
    .await;
    // A key of an existing card cannot be bound to another job.
    let id2 = o.approved(&s, application(10)).await;
    let j2 = o
        .post(
            jobs,
            &s.clerk,
            json!({"application_id": id2, "card_div_data": "00112233445566778899"}),
        )
        .await
        .json();
    o.post(
        &format!("/api/v1/personalization-jobs/{}/card-key", j2["job_id"]),
        &s.clerk,
        json!({"card_public_key": pk2}),
    )
    .await
    .refused(409, "card_key_in_use");
    // A rejected application never gets a job.
    let r = o
        .post("/api/v1/applications", &s.clerk, application(11))
        .await;
    let rid = r.json()["id"].as_i64().unwrap();
    o.post(
        &format!("/api/v1/applications/{rid}/reject"),
        &s.approver,
        json!({"reason": "no"}),
    )
    .await;
    o.post(
        jobs,
        &s.clerk,
        json!({"application_id": rid, "card_div_data": "00112233445566778899"}),
    )
    .await
    .refused(409, "application_not_approved");
}

async fn replacement_revokes_the_old_card(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(12)).await;
    let (first, _) = o.personalize(&s, id).await;
    // Lost card: a replacement job for the active certificate; new serial and index.
    let (second, _) = o.personalize(&s, id).await;
    assert_ne!(first["card_serial"], second["card_serial"]);
    assert_ne!(first["status_index"], second["status_index"]);
    let old = o
        .get(
            &format!("/api/v1/cards/{}", first["card_serial"].as_str().unwrap()),
            Some(&s.clerk),
        )
        .await
        .json();
    assert_eq!(old["state"], "revoked");
    assert_eq!(old["revoke_reason"], "replaced");
    let a = o
        .get(&format!("/api/v1/applications/{id}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(a["active_card"], second["card_serial"]);
    // The status list says so.
    let r = o.get("/api/v1/status-list", None).await;
    let signed = Signed::decode(&r.bytes).unwrap();
    let body: StatusListBody<'_> = signed.open(&[], &o.state.keys.status.public_key()).unwrap();
    let list = StatusListView::parse(body.list).unwrap();
    assert!(list
        .is_revoked(first["status_index"].as_u64().unwrap() as u32)
        .unwrap());
    assert!(!list
        .is_revoked(second["status_index"].as_u64().unwrap() as u32)
        .unwrap());
}

async fn revocation_and_status_list(o: Office) {
    let s = o.staff().await;
    let status_key = o.state.keys.status.public_key();
    let r = o.get("/api/v1/status-list", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");
    let etag0 = r.headers[header::ETAG].to_str().unwrap().to_owned();
    let body0: StatusListBody<'_> = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    let epoch0 = body0.epoch;
    assert_eq!(etag0, format!("\"{epoch0}\""));
    assert_eq!(
        StatusListView::parse(body0.list).unwrap().revoked_count(),
        0
    );
    // If-None-Match with the current ETag: 304.
    let r = o
        .send(
            Request::get("/api/v1/status-list")
                .header(header::IF_NONE_MATCH, &etag0)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.bytes.is_empty());

    let id = o.approved(&s, application(13)).await;
    let (job, _) = o.personalize(&s, id).await;
    let serial = job["card_serial"].as_str().unwrap();
    let index = job["status_index"].as_u64().unwrap() as u32;
    let revoke = format!("/api/v1/cards/{serial}/revoke");
    o.post(&revoke, &s.clerk, json!({"reason": "lost"}))
        .await
        .refused(403, "wrong_role");
    o.post(&revoke, &s.approver, json!({"reason": "misplaced"}))
        .await
        .refused(422, "invalid_reason");
    o.post(
        "/api/v1/cards/00000000000000ff/revoke",
        &s.approver,
        json!({"reason": "lost"}),
    )
    .await
    .refused(404, "unknown_card");
    o.post(
        "/api/v1/cards/xyz/revoke",
        &s.approver,
        json!({"reason": "lost"}),
    )
    .await
    .refused(400, "invalid_serial");
    let r = o
        .post(&revoke, &s.approver, json!({"reason": "lost"}))
        .await;
    assert_eq!(r.json()["state"], "revoked");
    assert_eq!(r.json()["revoke_reason"], "lost");
    let again = o
        .post(&revoke, &s.approver, json!({"reason": "stolen"}))
        .await;
    assert_eq!(
        again.json()["revoke_reason"],
        "lost",
        "a revocation is final"
    );
    // A lost card leaves the certificate active: a replacement may be made.
    let a = o
        .get(&format!("/api/v1/applications/{id}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(a["state"], "active");

    // New list: revoked; the old ETag no longer matches.
    let r = o
        .send(
            Request::get("/api/v1/status-list")
                .header(header::IF_NONE_MATCH, &etag0)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body1: StatusListBody<'_> = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    assert!(body1.epoch > epoch0);
    let list = StatusListView::parse(body1.list).unwrap();
    assert!(list.is_revoked(index).unwrap());
    assert_eq!(list.revoked_count(), 1);
    // The cached list is the same bytes until the epoch moves.
    let r2 = o.get("/api/v1/status-list", None).await;
    assert_eq!(r2.bytes, r.bytes);

    // Delta from the first epoch: exactly the revoked index, and the new size.
    let r = o
        .get(&format!("/api/v1/status-list/delta?from={epoch0}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let d: StatusDeltaBody<'_> = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    assert_eq!((d.from_epoch, d.to_epoch), (epoch0, body1.epoch));
    d.check_continues(epoch0).unwrap();
    assert_eq!(d.size, list.size());
    let added: Vec<u32> = IndexSetView::parse(d.added).unwrap().iter().collect();
    assert_eq!(added, [index]);
    // The delta carries the current epoch's ETag: asked again with it, 304 (the same ETag, no
    // body); with a stale ETag, the delta again (the same signed bytes, from the cache).
    let delta_url = format!("/api/v1/status-list/delta?from={epoch0}");
    let delta_etag = r.headers[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(delta_etag, format!("\"{}\"", body1.epoch));
    let delta_bytes = r.bytes.clone();
    let r = o.send(get_if_none_match(&delta_url, &delta_etag)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.bytes.is_empty());
    assert_eq!(r.headers[header::ETAG], delta_etag.as_str());
    let r = o.send(get_if_none_match(&delta_url, &etag0)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::ETAG], delta_etag.as_str());
    assert_eq!(r.bytes, delta_bytes);
    // Already current: 304; from the future: 404; from epoch 0: 410.
    let r = o
        .get(
            &format!("/api/v1/status-list/delta?from={}", body1.epoch),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    o.get(
        &format!("/api/v1/status-list/delta?from={}", body1.epoch + 5),
        None,
    )
    .await
    .refused(404, "unknown_epoch");
    o.get("/api/v1/status-list/delta?from=0", None)
        .await
        .refused(410, "epoch_too_old");
    // A matching If-None-Match does not turn a refusal into 304 (RFC 9110 §13.2.1: conditions
    // are evaluated only where the answer would otherwise be 2xx).
    o.send(get_if_none_match(
        "/api/v1/status-list/delta?from=0",
        &delta_etag,
    ))
    .await
    .refused(410, "epoch_too_old");
    o.send(get_if_none_match(
        &format!("/api/v1/status-list/delta?from={}", body1.epoch + 5),
        "*",
    ))
    .await
    .refused(404, "unknown_epoch");
    o.get("/api/v1/status-list/delta?from=abc", None)
        .await
        .refused(400, "invalid_query");
    o.get("/api/v1/status-list/delta", None)
        .await
        .refused(400, "invalid_query");

    // A final reason ends the certificate: no replacement job.
    let id2 = o.approved(&s, application(14)).await;
    let (job2, _) = o.personalize(&s, id2).await;
    o.post(
        &format!(
            "/api/v1/cards/{}/revoke",
            job2["card_serial"].as_str().unwrap()
        ),
        &s.approver,
        json!({"reason": "deceased"}),
    )
    .await;
    let a = o
        .get(&format!("/api/v1/applications/{id2}"), Some(&s.clerk))
        .await
        .json();
    assert_eq!(a["state"], "revoked");
    // The list changed: the delta's old ETag now gets 200 with a new ETag and both indices.
    let index2 = job2["status_index"].as_u64().unwrap() as u32;
    let r = o.send(get_if_none_match(&delta_url, &delta_etag)).await;
    assert_eq!(r.status, StatusCode::OK);
    let etag2 = r.headers[header::ETAG].to_str().unwrap().to_owned();
    assert_ne!(etag2, delta_etag);
    let d2: StatusDeltaBody<'_> = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    assert_eq!(etag2, format!("\"{}\"", d2.to_epoch));
    assert_eq!(d2.from_epoch, epoch0);
    assert!(d2.to_epoch > body1.epoch);
    let added: Vec<u32> = IndexSetView::parse(d2.added).unwrap().iter().collect();
    assert_eq!(added, [index, index2]);
    let r = o.send(get_if_none_match(&delta_url, &etag2)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    o.post(
        "/api/v1/personalization-jobs",
        &s.clerk,
        json!({"application_id": id2, "card_div_data": "00112233445566778899"}),
    )
    .await
    .refused(409, "application_not_approved");
}

async fn vouchers_and_block_orders(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(15)).await;
    let (job, _) = o.personalize(&s, id).await;
    let serial = job["card_serial"].as_str().unwrap();
    let url = format!("/api/v1/cards/{serial}/vouchers");
    o.post(&url, &s.clerk, json!({"amount": 10}))
        .await
        .refused(403, "wrong_role");
    o.post(&url, &s.approver, json!({"amount": 0}))
        .await
        .refused(422, "invalid_amount");
    o.post(&url, &s.approver, json!({"amount": 100_001}))
        .await
        .refused(422, "invalid_amount");
    o.post(&url, &s.approver, json!({"amount": -1}))
        .await
        .refused(422, "invalid_body");
    let root = o.state.keys.root.public_key();
    for expected_seq in 1..=2u32 {
        let r = o
            .post(&url, &s.approver, json!({"amount": 50}))
            .await
            .json();
        assert_eq!(r["seq"], expected_seq);
        let cert_wire = hex::decode(r["voucher_cert"].as_str().unwrap()).unwrap();
        let cert = KeyCertificate::verify(
            &Signed::decode(&cert_wire).unwrap(),
            &root,
            Role::Voucher,
            issuance_server::now(),
        )
        .unwrap();
        let wire = hex::decode(r["voucher"].as_str().unwrap()).unwrap();
        let v: VoucherBody = Signed::decode(&wire).unwrap().open(&[], &cert.key).unwrap();
        assert_eq!(hex::encode(v.card_serial), serial);
        assert_eq!((v.seq, v.amount), (expected_seq, 50));
        assert!(v.valid_until > v.issued_at);
    }
    let block = format!("/api/v1/cards/{serial}/block-order");
    o.post(&block, &s.approver, json!({}))
        .await
        .refused(409, "card_not_revoked");
    o.post(
        &format!("/api/v1/cards/{serial}/revoke"),
        &s.approver,
        json!({"reason": "stolen"}),
    )
    .await;
    o.post(&url, &s.approver, json!({"amount": 5}))
        .await
        .refused(409, "card_not_active");
    let r = o.post(&block, &s.approver, json!({})).await.json();
    let cert_wire = hex::decode(r["issuer_cert"].as_str().unwrap()).unwrap();
    let cert = KeyCertificate::verify(
        &Signed::decode(&cert_wire).unwrap(),
        &root,
        Role::Issuer,
        issuance_server::now(),
    )
    .unwrap();
    let wire = hex::decode(r["order"].as_str().unwrap()).unwrap();
    let order: CardBlockBody = Signed::decode(&wire).unwrap().open(&[], &cert.key).unwrap();
    assert_eq!(hex::encode(order.card_serial), serial);
    assert_eq!(order.reason, 2);
    o.post(
        "/api/v1/cards/0102030405060708/block-order",
        &s.approver,
        json!({}),
    )
    .await
    .refused(404, "unknown_card");
}

async fn distribution(o: Office) {
    let s = o.staff().await;
    let rk = o.get("/api/v1/root-key", None).await.json();
    let root =
        PublicKey::from_sec1(&hex::decode(rk["public_key"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(rk["key_id"], hex::encode(root.key_id()));
    let r = o.get("/api/v1/trust-bundle", None).await;
    let bundle = TrustBundle::verify(&r.bytes, &root, None).unwrap();
    let now = issuance_server::now();
    bundle
        .find(
            &o.state.keys.issuer.public_key().key_id(),
            Role::Issuer,
            now,
        )
        .unwrap();
    bundle
        .find(
            &o.state.keys.status.public_key().key_id(),
            Role::StatusSigner,
            now,
        )
        .unwrap();
    bundle
        .find(
            &o.state.keys.voucher.public_key().key_id(),
            Role::Voucher,
            now,
        )
        .unwrap();
    let etag = r.headers[header::ETAG].to_str().unwrap().to_owned();
    let r = o
        .send(
            Request::get("/api/v1/trust-bundle")
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    let status_key = o.state.keys.status.public_key();
    let r = o.get("/api/v1/service-rules", None).await;
    let rules: ServiceRulesBody = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    assert_eq!(rules.epoch, 1);
    assert_eq!(rules.max_status_age_s, 3 * 86_400);
    assert_eq!(
        (
            rules.companion_window_s,
            rules.passback_s,
            rules.max_debit_points,
            rules.rehab_min_interval_s
        ),
        (60, 20, 500, 3600)
    );
    let new_rules = json!({
        "max_status_age_s": 86_400, "companion_window_s": 30, "passback_s": 10,
        "max_debit_points": 200, "rehab_min_interval_s": 7200,
    });
    o.call(
        Method::PUT,
        "/api/v1/service-rules",
        Some(&s.clerk),
        Some(new_rules.clone()),
    )
    .await
    .refused(403, "wrong_role");
    let mut bad = new_rules.clone();
    bad["max_debit_points"] = json!(0);
    o.call(
        Method::PUT,
        "/api/v1/service-rules",
        Some(&s.admin),
        Some(bad),
    )
    .await
    .refused(422, "invalid_rules");
    let r = o
        .call(
            Method::PUT,
            "/api/v1/service-rules",
            Some(&s.admin),
            Some(new_rules),
        )
        .await;
    assert_eq!(r.json()["epoch"], 2);
    let r = o.get("/api/v1/service-rules", None).await;
    assert_eq!(r.headers[header::ETAG], "\"2\"");
    let rules: ServiceRulesBody = Signed::decode(&r.bytes)
        .unwrap()
        .open(&[], &status_key)
        .unwrap();
    assert_eq!((rules.epoch, rules.max_debit_points), (2, 200));
    let h = o.get("/healthz", None).await.json();
    assert_eq!(h["status"], "ok");
}

/// A tap-log batch of `records` signed by `terminal`.
fn log_batch(
    terminal: &RingSigner,
    first_seq: u32,
    records: &[shared_crypto::model::TapRecord<'_>],
) -> Vec<u8> {
    let items: shared_crypto::wire::ItemsBuf = records.iter().collect();
    let body = shared_crypto::model::LogBatchBody {
        terminal: shared_crypto::Signer::key_id(terminal),
        first_seq,
        last_seq: first_seq + records.len() as u32 - 1,
        created_at: issuance_server::now(),
        records: items.as_items(),
    };
    shared_crypto::sig::sign(&body, &[], terminal).unwrap()
}

async fn terminals_and_logs(o: Office) {
    use shared_crypto::model::{Outcome, Reason, ReceiptBody, TapRecord};
    let s = o.staff().await;
    let (terminal, _) = RingSigner::generate().unwrap();
    let pk = hex::encode(terminal.public_key().to_sec1());
    let good = json!({"subject": "Bus 42 gate", "public_key": pk, "services": ["transit", "welfare"], "region": 110105});
    o.post("/api/v1/terminals", &s.approver, good.clone())
        .await
        .refused(403, "wrong_role");
    for (field, value, code) in [
        ("subject", json!("x".repeat(49)), "invalid_subject"),
        ("public_key", json!("02abcd"), "invalid_public_key"),
        ("services", json!([]), "invalid_services"),
        ("services", json!(["flying"]), "invalid_services"),
        ("region", json!(7), "invalid_region"),
    ] {
        let mut b = good.clone();
        b[field] = value;
        o.post("/api/v1/terminals", &s.admin, b)
            .await
            .refused(422, code);
    }
    let r = o.post("/api/v1/terminals", &s.admin, good.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let t = r.json();
    assert_eq!(t["key_id"], hex::encode(terminal.public_key().key_id()));
    let cert_wire = hex::decode(t["certificate"].as_str().unwrap()).unwrap();
    let cert = KeyCertificate::verify(
        &Signed::decode(&cert_wire).unwrap(),
        &o.state.keys.root.public_key(),
        Role::Terminal,
        issuance_server::now(),
    )
    .unwrap();
    assert!(cert.body.services.contains(Service::Transit));
    assert!(cert.body.services.contains(Service::Welfare));
    assert!(!cert.body.services.contains(Service::Employment));
    assert_eq!(cert.body.region, 110105);
    assert_eq!(cert.key, terminal.public_key());
    o.post("/api/v1/terminals", &s.admin, good)
        .await
        .refused(409, "duplicate_terminal");
    let list = o.get("/api/v1/terminals", Some(&s.auditor)).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // A card with a welfare debit: the receipt is card-signed.
    let id = o.approved(&s, application(16)).await;
    let (job, card) = o.personalize(&s, id).await;
    let serial: [u8; 8] = hex::decode(job["card_serial"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let receipt = ReceiptBody {
        card_serial: serial,
        counter: 1,
        amount: 20,
        balance_after: 80,
        terminal: shared_crypto::Signer::key_id(&terminal),
        time: issuance_server::now(),
        reference: [7; 16],
    };
    let receipt_wire = shared_crypto::sig::sign(&receipt, &[], &card).unwrap();
    let record = |seq: u32, receipt: Option<Signed<'static>>| TapRecord {
        seq,
        time: issuance_server::now(),
        service: Service::Welfare,
        outcome: Outcome::Accepted,
        reason: Reason::Ok,
        card_serial: Some(serial),
        status_index: Some(job["status_index"].as_u64().unwrap() as u32),
        status_epoch: 1,
        status_issued_at: issuance_server::now(),
        receipt,
    };
    let leaked: &'static [u8] = Box::leak(receipt_wire.into_boxed_slice());
    // A terminal's log starts at record 0.
    let batch = log_batch(
        &terminal,
        0,
        &[
            record(0, None),
            record(1, Some(Signed::decode(leaked).unwrap())),
        ],
    );
    let url = format!("/api/v1/terminals/{}/logs", t["key_id"].as_str().unwrap());
    let upload = |bytes: Vec<u8>, url: String| {
        Request::post(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap()
    };
    let r = o.send(upload(batch.clone(), url.clone())).await;
    assert_eq!(
        r.json(),
        json!({"accepted": 2, "duplicate": false, "duplicates": 0, "receipts": 1, "anomalies": 0})
    );
    let r = o.send(upload(batch.clone(), url.clone())).await;
    assert_eq!(
        r.json(),
        json!({"accepted": 0, "duplicate": true, "duplicates": 2, "receipts": 0, "anomalies": 0})
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM receipts")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Refusals: tampered signature, another terminal's batch, unknown terminal, garbage.
    let mut tampered = batch.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    o.send(upload(tampered, url.clone()))
        .await
        .refused(422, "bad_signature");
    let (stranger, _) = RingSigner::generate().unwrap();
    let foreign = log_batch(&stranger, 1, &[record(3, None)]);
    o.send(upload(foreign.clone(), url.clone()))
        .await
        .refused(422, "wrong_signer");
    o.send(upload(
        foreign,
        format!(
            "/api/v1/terminals/{}/logs",
            hex::encode(shared_crypto::Signer::key_id(&stranger))
        ),
    ))
    .await
    .refused(404, "unknown_terminal");
    // Signed by this terminal, but the body names another one: refused, nothing stored.
    let misnamed = {
        let records = [record(2, None)];
        let items: shared_crypto::wire::ItemsBuf = records.iter().collect();
        let body = shared_crypto::model::LogBatchBody {
            terminal: shared_crypto::Signer::key_id(&stranger),
            first_seq: 2,
            last_seq: 2,
            created_at: issuance_server::now(),
            records: items.as_items(),
        };
        shared_crypto::sig::sign(&body, &[], &terminal).unwrap()
    };
    o.send(upload(misnamed, url.clone()))
        .await
        .refused(422, "wrong_terminal");
    o.send(upload(vec![1, 2, 3], url.clone()))
        .await
        .refused(400, "malformed_batch");
    o.send(upload(vec![], "/api/v1/terminals/zz/logs".into()))
        .await
        .refused(400, "invalid_key_id");
    // Stats aggregate the taps per service, region and day; one card's cell is suppressed
    // (tests/backoffice.rs has the statistics in full).
    let taps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM taps")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(taps, 2, "only the first batch's records are stored");
    let st = o.get("/api/v1/stats", Some(&s.auditor)).await.json();
    assert_eq!(st["usage"][0]["service"], "welfare");
    assert_eq!(st["usage"][0]["region"], 110105);
    assert_eq!(st["usage"][0]["suppressed"], true);
    assert!(st["usage"][0]["taps"].is_null());
    assert_eq!(st["receipts"], 1);
    assert_eq!(st["anomalies"], 0);
    assert_eq!(st["terminals"], 1);
}

async fn audit_and_stats(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(17)).await;
    o.personalize(&s, id).await;
    let rows = o
        .get("/api/v1/audit?limit=1000", Some(&s.auditor))
        .await
        .json();
    let actions: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "office.init",
        "user.create",
        "application.submit",
        "application.approve",
        "job.create",
        "job.bind_key",
        "job.confirm",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // The audit log holds no personal data.
    let text = rows.to_string();
    assert!(!text.contains(&resident_id(17)));
    assert!(!text.contains("持证人"));
    let page = o
        .get("/api/v1/audit?after=2&limit=2", Some(&s.admin))
        .await
        .json();
    assert_eq!(page[0]["seq"], 3);
    assert_eq!(page.as_array().unwrap().len(), 2);
    let v = o.get("/api/v1/audit/verify", Some(&s.auditor)).await.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["rows"], rows.as_array().unwrap().len());
    let st = o.get("/api/v1/stats", Some(&s.auditor)).await.json();
    assert_eq!(st["applications"]["active"], 1);
    assert_eq!(st["cards"]["active"], 1);
    assert_eq!(st["jobs"]["completed"], 1);
    o.get("/api/v1/stats", Some(&s.clerk))
        .await
        .refused(403, "wrong_role");

    // Tampering: an edited row, a deleted row in the middle, a deleted last row, an added row.
    o.sql("UPDATE audit_log SET details = '{\"kind\":\"forged\"}' WHERE seq = 4")
        .await;
    let v = o.get("/api/v1/audit/verify", Some(&s.auditor)).await.json();
    assert_eq!(
        (
            v["ok"].clone(),
            v["problem"]["problem"].clone(),
            v["problem"]["seq"].clone()
        ),
        (json!(false), json!("edited"), json!(4))
    );
    let broken = issuance_server::audit::verify(o.state.db.pool())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(broken, issuance_server::audit::Broken::Edited { seq: 4 });
}

both_backends!(audit_deletions_and_insertions);

/// The content of audit row `seq` as it would be chained.
async fn audit_entry(o: &Office, seq: i64) -> issuance_server::audit::AuditEntry {
    let row =
        sqlx::query("SELECT at, actor, action, object, details FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
    issuance_server::audit::AuditEntry {
        at: row.try_get::<i64, _>("at").unwrap() as u64,
        actor: row.try_get("actor").unwrap(),
        action: row.try_get("action").unwrap(),
        object: row.try_get("object").unwrap(),
        details: row.try_get("details").unwrap(),
    }
}

/// Stores an audit row with exactly these values (a forger with write access to the table).
async fn insert_audit_row(
    o: &Office,
    seq: i64,
    e: &issuance_server::audit::AuditEntry,
    prev_hash: [u8; 32],
    hash: [u8; 32],
) {
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, object, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(e.at as i64)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.object)
    .bind(&e.details)
    .bind(prev_hash.to_vec())
    .bind(hash.to_vec())
    .execute(o.state.db.pool())
    .await
    .unwrap();
}

async fn audit_deletions_and_insertions(o: Office) {
    use issuance_server::audit::{chain_hash, verify, AuditEntry, Broken};
    let s = o.staff().await;
    o.approved(&s, application(18)).await;
    let pool = o.state.db.pool();
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(verify(pool).await.unwrap().is_ok());
    // Copy row 3 aside, delete it: a gap.
    o.sql("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 3")
        .await;
    o.sql("DELETE FROM audit_log WHERE seq = 3").await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Gap {
            expected: 3,
            found: 4
        }
    );
    // Put back a different row 3 (a forged insertion with the right number): the link of row 4
    // or its own hash breaks.
    o.sql("INSERT INTO audit_log SELECT seq, at, actor, 'user.disable', object, details, prev_hash, hash FROM saved").await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Edited { seq: 3 }
    );
    o.sql("DELETE FROM audit_log WHERE seq = 3").await;
    o.sql("INSERT INTO audit_log SELECT * FROM saved").await;
    assert!(verify(pool).await.unwrap().is_ok());
    // Deleting the last row: the head points past the end.
    o.sql(&format!(
        "CREATE TABLE saved_last AS SELECT * FROM audit_log WHERE seq = {last}"
    ))
    .await;
    o.sql(&format!("DELETE FROM audit_log WHERE seq = {last}"))
        .await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Truncated {
            last: (last - 1) as u64,
            head: last as u64
        }
    );
    o.sql("INSERT INTO audit_log SELECT * FROM saved_last")
        .await;
    assert!(verify(pool).await.unwrap().is_ok());

    // A well-chained row appended at the head's seq + 1 without moving the head: the row itself
    // is right in every respect, only the head does not reach it.
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .unwrap();
    let head_seq: i64 = head.try_get("seq").unwrap();
    let head_hash: [u8; 32] = head
        .try_get::<Vec<u8>, _>("hash")
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(head_seq, last);
    let forged = AuditEntry {
        at: issuance_server::now(),
        actor: "user:admin".into(),
        action: "user.create".into(),
        object: "user:99".into(),
        details: "{\"name\":\"mallory\",\"role\":\"admin\"}".into(),
    };
    let forged_hash = chain_hash(&head_hash, (last + 1) as u64, &forged);
    insert_audit_row(&o, last + 1, &forged, head_hash, forged_hash).await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Head {
            last: (last + 1) as u64,
            head: last as u64
        }
    );
    // Moving the head to it is exactly what a real append does: then the chain is intact,
    // which shows that the head was the only thing wrong (and why the head is the anchor to
    // keep elsewhere).
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(last + 1)
        .bind(forged_hash.to_vec())
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(verify(pool).await.unwrap().unwrap().rows, (last + 1) as u64);
    // The head moved but its hash left behind: the head does not match the last row either.
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(head_hash.to_vec())
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Head {
            last: (last + 1) as u64,
            head: (last + 1) as u64
        }
    );
    o.sql(&format!("DELETE FROM audit_log WHERE seq = {}", last + 1))
        .await;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(last)
        .bind(head_hash.to_vec())
        .execute(pool)
        .await
        .unwrap();
    assert!(verify(pool).await.unwrap().is_ok());

    // A row replaced in the middle by one whose own hash is right for the prev_hash it states,
    // but that prev_hash is not the row before it: the link breaks at that row.
    let entry3 = audit_entry(&o, 3).await;
    let stranger_prev = [0x5A; 32];
    o.sql("DELETE FROM audit_log WHERE seq = 3").await;
    insert_audit_row(
        &o,
        3,
        &entry3,
        stranger_prev,
        chain_hash(&stranger_prev, 3, &entry3),
    )
    .await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Link { seq: 3 }
    );
    o.sql("DELETE FROM audit_log WHERE seq = 3").await;
    o.sql("INSERT INTO audit_log SELECT * FROM saved").await;
    assert!(verify(pool).await.unwrap().is_ok());

    // A copied row appended far past the head: a gap in the numbers.
    o.sql(&format!(
        "INSERT INTO audit_log SELECT {last} + 5, at, actor, action, object, details, prev_hash, hash FROM saved"
    ))
    .await;
    assert_eq!(
        verify(pool).await.unwrap().unwrap_err(),
        Broken::Gap {
            expected: (last + 1) as u64,
            found: (last + 5) as u64
        }
    );
}

async fn malformed_requests(o: Office) {
    let s = o.staff().await;
    // Not JSON, wrong content type, unknown field, oversized body.
    let r = o
        .send(
            Request::post("/api/v1/applications")
                .header(header::AUTHORIZATION, format!("Bearer {}", s.clerk))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    r.refused(400, "invalid_json");
    let r = o
        .send(
            Request::post("/api/v1/applications")
                .header(header::AUTHORIZATION, format!("Bearer {}", s.clerk))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(application(1).to_string()))
                .unwrap(),
        )
        .await;
    r.refused(415, "unsupported_media_type");
    let mut extra = application(1);
    extra["shoe_size"] = json!(44);
    o.post("/api/v1/applications", &s.clerk, extra)
        .await
        .refused(422, "invalid_body");
    let mut missing = application(1);
    missing.as_object_mut().unwrap().remove("category");
    o.post("/api/v1/applications", &s.clerk, missing)
        .await
        .refused(422, "invalid_body");
    let mut huge = application(1);
    huge["photo"] = json!("A".repeat(600 * 1024));
    o.post("/api/v1/applications", &s.clerk, huge)
        .await
        .refused(413, "body_too_large");
    // Unknown endpoint and wrong method answer in JSON too.
    o.get("/api/v1/nothing-here", None)
        .await
        .refused(404, "no_such_endpoint");
    o.get("/elsewhere", None)
        .await
        .refused(404, "no_such_endpoint");
    o.call(Method::DELETE, "/api/v1/applications", Some(&s.clerk), None)
        .await
        .refused(405, "method_not_allowed");
    o.call(Method::POST, "/api/v1/status-list", None, None)
        .await
        .refused(405, "method_not_allowed");
    // Approve with a body that is not JSON.
    let id = o
        .post("/api/v1/applications", &s.clerk, application(1))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let r = o
        .send(
            Request::post(format!("/api/v1/applications/{id}/approve"))
                .header(header::AUTHORIZATION, format!("Bearer {}", s.approver))
                .body(Body::from("{"))
                .unwrap(),
        )
        .await;
    r.refused(400, "invalid_json");
}

async fn openapi_lists_only_routed_operations(o: Office) {
    let doc = o.get("/api/v1/openapi.json", None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "only {} paths documented", paths.len());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = path
                .replace("{id}", "1")
                .replace("{serial}", "0011223344556677")
                .replace("{key_id}", "0011223344556677");
            let url = if path.starts_with("/healthz") {
                concrete
            } else {
                format!("/api/v1{concrete}")
            };
            let r = o.call(m.clone(), &url, None, None).await;
            let code = serde_json::from_slice::<Value>(&r.bytes)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            assert!(
                !matches!(
                    code.as_deref(),
                    Some("no_such_endpoint" | "method_not_allowed")
                ),
                "{method} {path} is documented but not routed"
            );
            assert!(
                ops[method]["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no responses"
            );
        }
    }
}

async fn batch_reissue(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(19)).await;
    let (job, card) = o.personalize(&s, id).await;
    issuance_server::batch::seed_synthetic_cards(&o.state, 1_234)
        .await
        .unwrap();
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    let report = issuance_server::batch::reissue_all(
        &o.state,
        "test",
        issuance_server::batch::ReissueOptions {
            validity_s: 10 * 86_400,
            page: 500,
            threads: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.credentials, 1_235);
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(after - before, 1_235);
    // The real card's newest credential is the re-issued one: same binding, new validity.
    let c = o
        .get(
            &format!("/api/v1/cards/{}", job["card_serial"].as_str().unwrap()),
            Some(&s.clerk),
        )
        .await
        .json();
    let wire = hex::decode(c["credential"].as_str().unwrap()).unwrap();
    let body: CredentialBody<'_> = Signed::decode(&wire)
        .unwrap()
        .open(&[], &issuer_key(&o))
        .unwrap();
    assert_eq!(body.card_key.0, card.public_key().to_sec1());
    assert_eq!(
        u64::from(body.status_index),
        job["status_index"].as_u64().unwrap()
    );
    assert_eq!(body.valid_until - body.valid_from, 10 * 86_400);
    assert_eq!(body.digests.len(), 8, "no photo, so no photo digest");
    // One audit entry per page, and the chain still verifies.
    let pages: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'credential.reissue'")
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
    assert_eq!(pages, 3);
    assert!(issuance_server::audit::verify(o.state.db.pool())
        .await
        .unwrap()
        .is_ok());
}

/// Counters at the end of their range (set with SQL; reaching them for real takes four billion
/// cards or vouchers): the last value is handed out, the one after is refused, and a refusal
/// changes nothing.
async fn refusals_at_the_limits(o: Office) {
    let s = o.staff().await;
    let id = o.approved(&s, application(22)).await;
    let (job, _) = o.personalize(&s, id).await;
    let serial = job["card_serial"].as_str().unwrap();
    let url = format!("/api/v1/cards/{serial}/vouchers");
    // Vouchers: seq is a u32 the card checks for increase; u32::MAX is the last one.
    o.sql(&format!(
        "UPDATE cards SET voucher_seq = {} WHERE id = (SELECT id FROM cards WHERE job_id = {})",
        u32::MAX - 1,
        job["job_id"]
    ))
    .await;
    let r = o.post(&url, &s.approver, json!({"amount": 5})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    assert_eq!(r.json()["seq"], u32::MAX);
    o.post(&url, &s.approver, json!({"amount": 5}))
        .await
        .refused(409, "voucher_seq_exhausted");
    let vouchers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vouchers")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(vouchers, 1);

    // Status indices: the list has at most u32::MAX entries (its size is a u32), so the last
    // index a card can get is u32::MAX - 1; a card with index u32::MAX would be outside every
    // list and no terminal could check it.
    let next_index = || async {
        sqlx::query_scalar::<_, i64>("SELECT value FROM counters WHERE name = 'next_status_index'")
            .fetch_one(o.state.db.pool())
            .await
            .unwrap()
    };
    let new_job = |n: u32| {
        let o = &o;
        let s = &s;
        async move {
            let id = o.approved(s, application(n)).await;
            o.post(
                "/api/v1/personalization-jobs",
                &s.clerk,
                json!({"application_id": id, "card_div_data": "00112233445566778899"}),
            )
            .await
        }
    };
    for (n, counter) in [(23, 1u64 << 32), (24, u64::from(u32::MAX))] {
        o.sql(&format!(
            "UPDATE counters SET value = {counter} WHERE name = 'next_status_index'"
        ))
        .await;
        new_job(n).await.refused(409, "status_list_full");
        assert_eq!(
            next_index().await,
            counter as i64,
            "the refusal rolled back"
        );
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM personalization_jobs")
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
        assert_eq!(jobs, 1);
    }
    o.sql(&format!(
        "UPDATE counters SET value = {} WHERE name = 'next_status_index'",
        u32::MAX - 1
    ))
    .await;
    let r = new_job(25).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let last_index = r.json()["status_index"].as_u64().unwrap();
    assert_eq!(last_index, u64::from(u32::MAX - 1));
    // The epoch grew to cover it (its list is not fetched here: 512 MiB of bits uncompressed).
    let size: i64 =
        sqlx::query_scalar("SELECT size FROM status_epochs ORDER BY epoch DESC LIMIT 1")
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
    assert!(last_index < size as u64, "index {last_index}, size {size}");
    new_job(26).await.refused(409, "status_list_full");
}
