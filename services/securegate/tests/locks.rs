//! Zero-trust locks across a cluster: two gateway nodes on one private NATS JetStream,
//! clients on distinct loopback addresses (127.0.0.2, 127.0.0.3, …).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};
use support::*;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn first_use_binds_once_cluster_wide_and_spoofed_headers_do_not_count() {
    // Bindings are written by gateways; the admin shows them once it has folded them.
    async fn bound(cluster: &Cluster, key_id: &str, want: &str) -> bool {
        let key_id = key_id.to_owned();
        eventually(std::time::Duration::from_secs(2), || {
            let key_id = key_id.clone();
            async move { cluster.locks(&key_id).await["bound_ip"] == want }
        })
        .await
    }
    let cluster = Cluster::start(&[&["--node-id", "gw-a"], &["--node-id", "gw-b"]]).await;
    let project = cluster.project().await;
    let (a, b) = (cluster.gateways[0].url(), cluster.gateways[1].url());
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));

    // Concurrent first use from two addresses on two nodes: exactly one binding, every time.
    for round in 0..20 {
        let (key_id, key) = cluster.key(&project, json!({})).await;
        let (r2, r3) = tokio::join!(
            chat_with(&from2, &a, &key, body("mock-gpt-4o-mini"), &[]),
            chat_with(&from3, &b, &key, body("mock-gpt-4o-mini"), &[]),
        );
        let winners: Vec<&str> = [("127.0.0.2", &r2), ("127.0.0.3", &r3)]
            .iter()
            .filter(|(_, r)| r.0 == 200)
            .map(|(ip, _)| *ip)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {r2:?} {r3:?}");
        let loser = if winners[0] == "127.0.0.2" { &r3 } else { &r2 };
        assert_eq!(loser.0, 403, "round {round}");
        assert_error(&loser.1, "ip_not_allowed");
        assert!(
            bound(&cluster, &key_id, winners[0]).await,
            "round {round}: {}",
            cluster.locks(&key_id).await
        );
    }

    // An untrusted peer's X-Forwarded-For is ignored: the binding is its own address.
    let (key_id, key) = cluster.key(&project, json!({})).await;
    let spoof = [("x-forwarded-for", "198.51.100.7".to_owned())];
    let (s, body_text) = chat_with(&from2, &a, &key, body("mock-gpt-4o-mini"), &spoof).await;
    assert_eq!(s, 200, "{body_text}");
    assert!(bound(&cluster, &key_id, "127.0.0.2").await);
    // …and claiming the bound address in the header from elsewhere does not help.
    let claim = [("x-forwarded-for", "127.0.0.2".to_owned())];
    let (s, body_text) = chat_with(&from3, &b, &key, body("mock-gpt-4o-mini"), &claim).await;
    assert_eq!(s, 403);
    assert_error(&body_text, "ip_not_allowed");

    // The owner unbinds; the next first use binds anew.
    let r = cluster
        .client
        .http
        .post(format!("{}/keys/{key_id}/unbind", cluster.client.base))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster
        .wait_for_seq(
            r.headers()["x-securegate-seq"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        )
        .await;
    let (s, _) = chat_with(&from3, &b, &key, body("mock-gpt-4o-mini"), &[]).await;
    assert_eq!(s, 200);
    assert!(bound(&cluster, &key_id, "127.0.0.3").await);

    // An allow-list of networks.
    let (_, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "allow", "cidrs": ["127.0.0.2/32"]}}),
        )
        .await;
    assert_eq!(
        chat_with(&from2, &a, &key, body("mock-gpt-4o-mini"), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        chat_with(&from3, &a, &key, body("mock-gpt-4o-mini"), &[])
            .await
            .0,
        403
    );

    // Every refusal reaches the signals stream (published from each node's spool, so
    // the last ones may still be on their way).
    use sg_eventlog::EventLog;
    let log =
        sg_eventlog::jetstream::JetStreamLog::connect(&cluster.nats.url(), Default::default())
            .await
            .unwrap();
    let violations = || async {
        let bounds = log.bounds(sg_eventlog::StreamName::Signals).await.unwrap();
        let mut violations = 0;
        for seq in bounds.first_seq..=bounds.last_seq {
            if let Some(m) = log
                .get(sg_eventlog::StreamName::Signals, seq)
                .await
                .unwrap()
            {
                let env = sg_events::decode(&m.payload).unwrap();
                if let sg_events::Event::LockViolated(v) = env.event {
                    assert_eq!(v.code, "ip_not_allowed");
                    violations += 1;
                }
            }
        }
        violations
    };
    let all = eventually(std::time::Duration::from_secs(10), || async {
        violations().await >= 22
    })
    .await;
    assert!(all, "{} violations recorded", violations().await);
}

#[tokio::test]
async fn trusted_proxies_geo_device_model_and_expiry_locks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sg_geoip::testdb::write_city_db(
        &db,
        &[
            ("81.2.69.0/24", "GB", "London"),
            ("89.160.20.0/24", "SE", "Linköping"),
            ("2.125.160.0/24", "GB", "Boxford"),
        ],
    )
    .unwrap();
    let cluster = Cluster::start(&[&[
        "--trusted-proxies",
        "127.0.0.1",
        "--geoip-db",
        db.to_str().unwrap(),
    ]])
    .await;
    let project = cluster.project().await;
    let gw = cluster.gateways[0].url();
    let proxy = client_from("127.0.0.1");
    let via = |ip: &str| [("x-forwarded-for", format!("203.0.113.250, {ip}"))];

    // City lock: London allowed; Boxford (same country, other city) and Linköping not; an
    // address the database cannot place is refused.
    let (_, key) = cluster
        .key(&project, json!({"ip": {"mode": "off"}, "geo": {"cities": [{"country": "GB", "city": "london"}]}}))
        .await;
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &via("81.2.69.142")
        )
        .await
        .0,
        200
    );
    for ip in ["2.125.160.216", "89.160.20.112", "192.0.2.1"] {
        let (s, b) = chat_with(&proxy, &gw, &key, body("mock-gpt-4o-mini"), &via(ip)).await;
        assert_eq!(s, 403, "{ip}: {b}");
        assert_error(&b, "city_not_allowed");
    }
    // Country lock.
    let (_, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "off"}, "geo": {"countries": ["se"]}}),
        )
        .await;
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &via("89.160.20.112")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &via("81.2.69.142")
        )
        .await
        .0,
        403
    );

    // Behind a trusted proxy, the IP binding is the forwarded client's address.
    let (key_id, key) = cluster.key(&project, json!({})).await;
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &via("81.2.69.142")
        )
        .await
        .0,
        200
    );
    assert!(
        eventually(std::time::Duration::from_secs(2), || async {
            cluster.locks(&key_id).await["bound_ip"] == "81.2.69.142"
        })
        .await
    );
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &via("81.2.69.143")
        )
        .await
        .0,
        403
    );

    // Device lock: auto-bind on first use; another device or none is refused.
    let (key_id, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "off"}, "device": {"mode": "auto_bind"}}),
        )
        .await;
    let dev = |d: &str| [("x-device-fingerprint", d.to_owned())];
    let (s, b) = chat_with(&proxy, &gw, &key, body("mock-gpt-4o-mini"), &[]).await;
    assert_eq!(s, 403);
    assert_error(&b, "device_required");
    assert_eq!(
        chat_with(
            &proxy,
            &gw,
            &key,
            body("mock-gpt-4o-mini"),
            &dev("laptop-1")
        )
        .await
        .0,
        200
    );
    assert!(
        eventually(std::time::Duration::from_secs(2), || async {
            cluster.locks(&key_id).await["bound_device"] == "laptop-1"
        })
        .await
    );
    let (s, b) = chat_with(&proxy, &gw, &key, body("mock-gpt-4o-mini"), &dev("phone-2")).await;
    assert_eq!(s, 403);
    assert_error(&b, "device_not_allowed");
    assert!(
        !b.contains("laptop-1"),
        "a refusal must not reveal the bound device"
    );

    // Model allow-list, on JSON and multipart bodies, before any upstream traffic.
    let (_, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "off"}, "models": ["mock-gpt-4o-mini", "whisper-1"]}),
        )
        .await;
    assert_eq!(
        chat_with(&proxy, &gw, &key, body("mock-gpt-4o-mini"), &[])
            .await
            .0,
        200
    );
    let (s, b) = chat_with(&proxy, &gw, &key, body("gpt-5"), &[]).await;
    assert_eq!(s, 403);
    assert_error(&b, "model_not_allowed");
    let audio = |model: &str| {
        reqwest::multipart::Form::new()
            .text("model", model.to_owned())
            .part(
                "file",
                reqwest::multipart::Part::bytes(vec![0u8; 64]).file_name("a.wav"),
            )
    };
    let r = proxy
        .post(format!("{gw}/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(audio("tts-hd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_error(&r.text().await.unwrap(), "model_not_allowed");
    let r = proxy
        .post(format!("{gw}/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(audio("whisper-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let models: Value = proxy
        .get(format!("{gw}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-gpt-4o-mini", "whisper-1"]);

    // Expiry.
    let (_, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "off"}, "expires_at": now() - 1}),
        )
        .await;
    let (s, b) = chat_with(&proxy, &gw, &key, body("mock-gpt-4o-mini"), &[]).await;
    assert_eq!(s, 403);
    assert_error(&b, "key_expired");

    // Bad lock settings are refused by the admin API with a clear error.
    let (s, b) = cluster
        .client
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "x", "locks": {"ip": {"mode": "allow", "cidrs": ["not-an-ip"]}}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
}

/// A chat request through a trusted proxy at 127.0.0.1 that forwards for `ip`.
async fn from_place(proxy: &reqwest::Client, gw: &str, key: &str, ip: &str) -> (u16, String) {
    let xff = [("x-forwarded-for", format!("203.0.113.250, {ip}"))];
    chat_with(proxy, gw, key, body("mock-gpt-4o-mini"), &xff).await
}

#[tokio::test]
async fn geo_auto_bind_first_place_wins_cluster_wide_and_is_shown_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sg_geoip::testdb::write_city_db(
        &db,
        &[
            ("81.2.69.0/24", "GB", "London"),
            ("89.160.20.0/24", "SE", "Linköping"),
            ("2.125.160.0/24", "GB", "Boxford"),
        ],
    )
    .unwrap();
    let db = db.to_str().unwrap();
    let node = |id| {
        [
            "--node-id",
            id,
            "--trusted-proxies",
            "127.0.0.1",
            "--geoip-db",
            db,
        ]
    };
    let (na, nb) = (node("gw-a"), node("gw-b"));
    let cluster = Cluster::start(&[&na, &nb]).await;
    let project = cluster.project().await;
    let (a, b) = (cluster.gateways[0].url(), cluster.gateways[1].url());
    let proxy = client_from("127.0.0.1");
    async fn place(cluster: &Cluster, key_id: &str, want: Value) -> bool {
        let key_id = key_id.to_owned();
        eventually(std::time::Duration::from_secs(2), || {
            let (key_id, want) = (key_id.clone(), want.clone());
            async move { cluster.locks(&key_id).await["bound_place"] == want }
        })
        .await
    }

    // Concurrent first use from two countries on two nodes: one place wins, every time.
    let country = json!({"ip": {"mode": "off"}, "geo": {"mode": "auto_bind"}});
    for round in 0..10 {
        let (key_id, key) = cluster.key(&project, country.clone()).await;
        let (london, linkoping) = tokio::join!(
            from_place(&proxy, &a, &key, "81.2.69.142"),
            from_place(&proxy, &b, &key, "89.160.20.112"),
        );
        let winners: Vec<&str> = [("GB", &london), ("SE", &linkoping)]
            .iter()
            .filter(|(_, r)| r.0 == 200)
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {london:?} {linkoping:?}");
        let loser = if winners[0] == "GB" {
            &linkoping
        } else {
            &london
        };
        assert_eq!(loser.0, 403, "round {round}");
        assert_error(&loser.1, "city_not_allowed");
        assert!(
            place(
                &cluster,
                &key_id,
                json!({"country": winners[0], "city": null})
            )
            .await,
            "round {round}: {}",
            cluster.locks(&key_id).await
        );
        // Country level: another city of the bound country passes on either node.
        if winners[0] == "GB" {
            let (s, t) = from_place(&proxy, &b, &key, "2.125.160.216").await;
            assert_eq!(s, 200, "{t}");
        }
    }

    // City level: bound to London; Boxford (same country) is refused, as is an address
    // the database cannot place.
    let city = json!({"ip": {"mode": "off"}, "geo": {"mode": "auto_bind", "level": "city"}});
    let (key_id, key) = cluster.key(&project, city).await;
    let (s, t) = from_place(&proxy, &a, &key, "192.0.2.1").await;
    assert_eq!(s, 403, "{t}");
    assert_error(&t, "city_not_allowed");
    let (s, t) = from_place(&proxy, &a, &key, "81.2.69.142").await;
    assert_eq!(s, 200, "{t}");
    assert!(
        place(
            &cluster,
            &key_id,
            json!({"country": "GB", "city": "London"})
        )
        .await
    );
    for (gw, ip) in [
        (&a, "2.125.160.216"),
        (&b, "2.125.160.216"),
        (&b, "89.160.20.112"),
    ] {
        let (s, t) = from_place(&proxy, gw, &key, ip).await;
        assert_eq!(s, 403, "{ip}: {t}");
        assert_error(&t, "city_not_allowed");
    }
    let (s, _) = from_place(&proxy, &b, &key, "81.2.69.200").await;
    assert_eq!(s, 200);

    // Unbinding only the place: the next request binds anew (Boxford now).
    let r = cluster
        .client
        .http
        .post(format!("{}/keys/{key_id}/unbind", cluster.client.base))
        .bearer_auth(TOKEN)
        .json(&json!({"ip": false, "device": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seq = r.headers()["x-securegate-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["bound_place"], Value::Null);
    cluster.wait_for_seq(seq).await;
    let (s, t) = from_place(&proxy, &b, &key, "2.125.160.216").await;
    assert_eq!(s, 200, "{t}");
    assert!(
        place(
            &cluster,
            &key_id,
            json!({"country": "GB", "city": "Boxford"})
        )
        .await
    );

    // Mixing auto-bind with lists, or a level without auto-bind, is a clear 400.
    for bad in [
        json!({"geo": {"mode": "auto_bind", "countries": ["DE"]}}),
        json!({"geo": {"level": "city"}}),
        json!({"geo": {"mode": "auto_bind", "level": "street"}}),
    ] {
        let r = cluster
            .client
            .http
            .put(format!("{}/keys/{key_id}/locks", cluster.client.base))
            .bearer_auth(TOKEN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn signed_requests_within_300_seconds_once_on_the_whole_cluster() {
    let cluster = Cluster::start(&[&["--node-id", "gw-a"], &["--node-id", "gw-b"]]).await;
    let project = cluster.project().await;
    let (gw_a, gw_b) = (cluster.gateways[0].url(), cluster.gateways[1].url());
    let seed = [7u8; 32];
    let public = base64::engine::general_purpose::STANDARD
        .encode(sg_policy::signature::public_key_from_seed(&seed));
    let (_, key) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "off"}, "signature": {"public_key": public}}),
        )
        .await;
    let http = reqwest::Client::new();
    let path = "/v1/chat/completions";
    let send = |gateway: String, ts: i64, body_bytes: Vec<u8>, signature: Option<String>| {
        let mut r = http
            .post(format!("{gateway}{path}"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body_bytes);
        if let Some(s) = signature {
            r = r
                .header("x-sg-timestamp", ts.to_string())
                .header("x-sg-signature", s);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap())
        }
    };
    let sign = |ts: i64, bytes: &[u8]| {
        let digest = sg_policy::signature::body_sha256(bytes);
        sg_policy::signature::encode_signature(&sg_policy::signature::sign(
            &seed, ts, "POST", path, &digest,
        ))
    };
    let bytes = |n: i64| {
        serde_json::to_vec(&json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": format!("req {n}")}]})).unwrap()
    };

    // Unsigned: refused.
    let (s, b) = send(gw_a.clone(), now(), bytes(0), None).await;
    assert_eq!(s, 403);
    assert_error(&b, "signature_required");
    // ±299 s accepted, ±301 s refused.
    for (n, skew, ok) in [
        (1, 299, true),
        (2, -299, true),
        (3, 301, false),
        (4, -301, false),
    ] {
        let ts = now() + skew;
        let body_bytes = bytes(n);
        let (s, b) = send(
            gw_a.clone(),
            ts,
            body_bytes.clone(),
            Some(sign(ts, &body_bytes)),
        )
        .await;
        if ok {
            assert_eq!(s, 200, "skew {skew}: {b}");
        } else {
            assert_eq!(s, 403, "skew {skew}: {b}");
            assert_error(&b, "signature_expired");
        }
    }
    // A valid signature over another body is invalid.
    let ts = now();
    let (s, b) = send(gw_a.clone(), ts, bytes(5), Some(sign(ts, &bytes(6)))).await;
    assert_eq!(s, 403);
    assert_error(&b, "signature_invalid");
    // A signed request replayed to the other node (or the same one) is refused.
    let ts = now();
    let body_bytes = bytes(7);
    let signature = sign(ts, &body_bytes);
    assert_eq!(
        send(
            gw_a.clone(),
            ts,
            body_bytes.clone(),
            Some(signature.clone())
        )
        .await
        .0,
        200
    );
    let (s, b) = send(
        gw_b.clone(),
        ts,
        body_bytes.clone(),
        Some(signature.clone()),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_error(&b, "signature_replayed");
    let (s, _) = send(gw_a.clone(), ts, body_bytes, Some(signature)).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn behind_haproxy_with_proxy_protocol_v2_the_client_address_binds() {
    let mut cluster = Cluster::start(&[]).await;
    // The gateway speaks only PROXY v2 on its main port; probes use the health port.
    let master_key = cluster.dir.path().join("master.key");
    let nats_url = cluster.nats.url();
    let proc = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr2}",
            "--proxy-protocol",
            "--health-listen",
            "{addr}",
            "--master-key-file",
            master_key.to_str().unwrap(),
        ],
        &[("SECUREGATE_NATS_URL", nats_url.as_str())],
        cluster.dir.path(),
    )
    .await;
    let gateway = proc.addr2.expect("{addr2} is in the arguments");
    cluster.gateways.push(proc);
    let project = cluster.project().await;
    let haproxy = sg_testkit::haproxy::Haproxy::start(cluster.dir.path(), gateway, None)
        .await
        .unwrap();
    let (key_id, key) = cluster.key(&project, json!({})).await;
    // The client's own address (127.0.0.2) arrives in the PROXY header, HAProxy's
    // connection comes from 127.0.0.1.
    let front = format!("http://{}", haproxy.frontend);
    let (s, b) = chat_with(
        &client_from("127.0.0.2"),
        &front,
        &key,
        body("mock-gpt-4o-mini"),
        &[],
    )
    .await;
    assert_eq!(s, 200, "{b}\nhaproxy: {}", haproxy.stderr());
    assert!(
        eventually(std::time::Duration::from_secs(2), || async {
            cluster.locks(&key_id).await["bound_ip"] == "127.0.0.2"
        })
        .await,
        "{}",
        cluster.locks(&key_id).await
    );
    let (s, b) = chat_with(
        &client_from("127.0.0.3"),
        &front,
        &key,
        body("mock-gpt-4o-mini"),
        &[],
    )
    .await;
    assert_eq!(s, 403, "{b}");
    // A connection straight to the gateway, without the header, gets no answer.
    let direct = reqwest::Client::new()
        .get(format!("http://{gateway}/healthz"))
        .send()
        .await;
    assert!(
        direct.is_err(),
        "a connection without a PROXY header was served"
    );
}
