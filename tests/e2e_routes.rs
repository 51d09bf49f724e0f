//! Routes and document shaping, end to end on moto with the real binary: a single-table design
//! split into two indices, the blog-post shaping, an index that depends on an attribute, and a
//! record a computed field fails on.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use common::*;
use serde_json::{json, Map, Value};

/// A single table keyed by `PK` (hash) and `SK` (range), with a stream of `view`.
async fn create_app_table(ddb: &aws_sdk_dynamodb::Client, view: StreamViewType) {
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name("App")
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .attribute_definitions(attr("PK"))
        .attribute_definitions(attr("SK"))
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(view)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create the App table");
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn block(kind: &str, field: &str, value: &str) -> AttributeValue {
    AttributeValue::M([("type".to_string(), s(kind)), (field.to_string(), s(value))].into())
}

async fn put(ddb: &aws_sdk_dynamodb::Client, item: Vec<(&str, AttributeValue)>) {
    ddb.put_item()
        .table_name("App")
        .set_item(Some(
            item.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ))
        .send()
        .await
        .expect("put");
}

async fn delete(ddb: &aws_sdk_dynamodb::Client, pk: &str, sk: &str) {
    ddb.delete_item()
        .table_name("App")
        .key("PK", s(pk))
        .key("SK", s(sk))
        .send()
        .await
        .expect("delete");
}

/// Every item of the table as plain JSON.
async fn items(ddb: &aws_sdk_dynamodb::Client) -> Vec<Map<String, Value>> {
    let page = ddb.scan().table_name("App").send().await.expect("scan");
    page.items()
        .iter()
        .map(|item| {
            let converted: HashMap<_, _> = item
                .iter()
                .map(|(k, v)| (k.clone(), to_streams(v)))
                .collect();
            match sluice::transform::item_to_json(&converted).unwrap() {
                Value::Object(m) => m,
                _ => unreachable!(),
            }
        })
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

/// What the posts index must hold, computed here from the table (not by sluice's code): each
/// post without its blocks, with its paragraphs' text and its number of images.
fn expected_posts(items: &[Map<String, Value>]) -> BTreeMap<String, Value> {
    items
        .iter()
        .filter(|i| text(&i["SK"]).starts_with("POST#"))
        .map(|i| {
            let blocks = i
                .get("blocks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let paragraphs: Vec<String> = blocks
                .iter()
                .filter(|b| b["type"] == "paragraph")
                .map(|b| text(&b["text"]))
                .collect();
            let mut doc = i.clone();
            doc.remove("blocks");
            doc.insert("text".into(), json!(paragraphs.join("\n")));
            doc.insert(
                "image_count".into(),
                json!(blocks.iter().filter(|b| b["type"] == "image").count()),
            );
            (text(&i["PK"]), Value::Object(doc))
        })
        .collect()
}

/// Each comment with `body` renamed to `text`, under `PK|SK`.
fn expected_comments(items: &[Map<String, Value>]) -> BTreeMap<String, Value> {
    items
        .iter()
        .filter(|i| text(&i["SK"]).starts_with("COMMENT#"))
        .map(|i| {
            let mut doc = i.clone();
            if let Some(body) = doc.remove("body") {
                doc.insert("text".into(), body);
            }
            (
                format!("{}|{}", text(&i["PK"]), text(&i["SK"])),
                Value::Object(doc),
            )
        })
        .collect()
}

/// The README's single-table example, as shipped.
const SINGLE_TABLE_ROUTES: &str = include_str!("../config/routes-single-table.toml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_table_becomes_two_shaped_indices_and_deletes_of_both_kinds_propagate() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    // NEW_IMAGE: deletes carry the key only, and routes on key attributes still find them
    create_app_table(&ddb, StreamViewType::NewImage).await;
    let db = dir.path().join("sluice.db");
    let es_url = es.url();
    let options = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "App",
        index: "unused",
        db: &db,
        extra: SINGLE_TABLE_ROUTES,
    };
    let sluice = Sluice::start(&options, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;

    for p in 1..=5 {
        let pk = format!("POST#{p}");
        put(
            &ddb,
            vec![
                ("PK", s(&pk)),
                ("SK", s(&pk)),
                ("title", s(&format!("Post {p}"))),
                (
                    "blocks",
                    AttributeValue::L(vec![
                        block("paragraph", "text", &format!("First of {p}.")),
                        block("image", "src", &format!("{p}.png")),
                        block("paragraph", "text", &format!("Second of {p}.")),
                    ]),
                ),
            ],
        )
        .await;
        for c in 1..=3 {
            put(
                &ddb,
                vec![
                    ("PK", s(&pk)),
                    ("SK", s(&format!("COMMENT#{c}"))),
                    ("body", s(&format!("Comment {c} on {p}"))),
                ],
            )
            .await;
        }
    }
    for u in 1..=3 {
        put(
            &ddb,
            vec![("PK", s(&format!("USER#{u}"))), ("SK", s("PROFILE"))],
        )
        .await;
    }
    // changes: a post loses its images and gains a paragraph, a comment is edited
    put(
        &ddb,
        vec![
            ("PK", s("POST#2")),
            ("SK", s("POST#2")),
            ("title", s("Post 2, edited")),
            (
                "blocks",
                AttributeValue::L(vec![
                    block("paragraph", "text", "Only."),
                    block("paragraph", "text", "Paragraphs."),
                ]),
            ),
        ],
    )
    .await;
    put(
        &ddb,
        vec![
            ("PK", s("POST#3")),
            ("SK", s("COMMENT#1")),
            ("body", s("edited")),
        ],
    )
    .await;
    // deletes of both kinds, and of an entity that is indexed nowhere
    delete(&ddb, "POST#4", "POST#4").await;
    delete(&ddb, "POST#1", "COMMENT#2").await;
    delete(&ddb, "POST#5", "COMMENT#3").await;
    delete(&ddb, "USER#1", "PROFILE").await;

    let table = items(&ddb).await;
    let posts = expected_posts(&table);
    let comments = expected_comments(&table);
    assert_eq!(posts.len(), 4);
    assert_eq!(comments.len(), 13);
    assert_eq!(posts["POST#2"]["image_count"], json!(0));
    assert_eq!(posts["POST#2"]["text"], json!("Only.\nParagraphs."));
    assert_index_equals(&es, "posts", &posts, Duration::from_secs(60)).await;
    assert_index_equals(&es, "comments", &comments, Duration::from_secs(60)).await;
    assert!(
        es.documents("posts")
            .await
            .values()
            .all(|d| d.get("blocks").is_none()),
        "search documents carry no blocks"
    );
    // every comment was written with its post as routing (and deleted with it: none left)
    let routings = es.fake.routings("comments");
    assert_eq!(routings.len(), comments.len());
    for (id, routing) in &routings {
        assert_eq!(id.split('|').next(), Some(routing.as_str()), "{id}");
    }
    // and no write or delete ever addressed a comment with another routing
    assert_eq!(es.fake.stats().routing_mismatches, 0);
    // 3 user profiles created, 1 deleted: four records skipped, counted as having no route (the
    // last of them, the delete, may still be on its way when the indices are equal)
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut skipped = 0.0;
    while skipped < 4.0 && std::time::Instant::now() < until {
        skipped = sluice
            .metric("sluice_records_skipped_total", "reason=\"no_route\"")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(skipped, 4.0, "{}", sluice.log_text());
    assert!(es.documents("unused").await.is_empty());
}

fn dead_letters(sluice: &Sluice) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dead-letters", "--config"])
        .arg(&sluice.config)
        .args(["list", "--json"])
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_change_moves_the_document_and_a_failing_expression_dead_letters_its_record() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    create_app_table(&ddb, StreamViewType::NewAndOldImages).await;
    let db = dir.path().join("sluice.db");
    let routes = r#"
[[route]]
name = "posts"
index = "posts-{tenant}"
id = ["PK", "SK"]
compute.words = '.body | if type == "string" then (split(" ") | length) else error("body must be text, not \(type)") end'
"#;
    let es_url = es.url();
    let options = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "App",
        index: "unused",
        db: &db,
        extra: routes,
    };
    // the route places by `tenant`: without old images its deletes could not be found
    let config = dir.path().join("check.toml");
    std::fs::write(&config, config_toml(&options, free_port())).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(64), "{said}");
    assert!(
        said.contains("route[0] (posts): deletes cannot be routed") && said.contains("`tenant`"),
        "{said}"
    );

    // with old images (the stream is NEW_AND_OLD_IMAGES) it runs
    let http_port = free_port();
    let config = dir.path().join("sluice.toml");
    let with_old_images =
        config_toml(&options, http_port).replace("[source]\n", "[source]\nold_images = true\n");
    std::fs::write(&config, with_old_images).unwrap();
    let sluice = Sluice::start_with_config(&config, http_port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;

    let post = |pk: &str, tenant: &str, body: AttributeValue| {
        vec![
            ("PK", s(pk)),
            ("SK", s("POST")),
            ("tenant", s(tenant)),
            ("body", body),
        ]
    };
    put(&ddb, post("p1", "acme", s("one two three"))).await;
    put(&ddb, post("p2", "acme", s("stays here"))).await;
    put(&ddb, post("p3", "beta", s("beta post"))).await;
    let doc = |pk: &str, tenant: &str, body: &str| json!({"PK": pk, "SK": "POST", "tenant": tenant, "body": body, "words": body.split(' ').count()});
    let acme: BTreeMap<String, Value> = [
        ("p1|POST".to_string(), doc("p1", "acme", "one two three")),
        ("p2|POST".to_string(), doc("p2", "acme", "stays here")),
    ]
    .into();
    assert_index_equals(&es, "posts-acme", &acme, Duration::from_secs(60)).await;

    // p1 moves to beta; p3 gets a body the expression refuses
    put(&ddb, post("p1", "beta", s("one two three four"))).await;
    put(&ddb, post("p3", "beta", AttributeValue::N("7".into()))).await;
    put(&ddb, post("p4", "beta", s("after the failure"))).await;
    let acme: BTreeMap<String, Value> =
        [("p2|POST".to_string(), doc("p2", "acme", "stays here"))].into();
    let beta: BTreeMap<String, Value> = [
        (
            "p1|POST".to_string(),
            doc("p1", "beta", "one two three four"),
        ),
        // the refused change leaves the last good document, and the shard goes on
        ("p3|POST".to_string(), doc("p3", "beta", "beta post")),
        (
            "p4|POST".to_string(),
            doc("p4", "beta", "after the failure"),
        ),
    ]
    .into();
    assert_index_equals(&es, "posts-beta", &beta, Duration::from_secs(60)).await;
    assert_index_equals(&es, "posts-acme", &acme, Duration::from_secs(60)).await;
    let letters = dead_letters(&sluice);
    assert!(
        letters.contains("route `posts`: compute.words")
            && letters.contains("body must be text, not number"),
        "{letters}"
    );
    assert_eq!(
        sluice.metric("sluice_decode_errors_total", "").await,
        1.0,
        "{}",
        sluice.log_text()
    );
}

/// The posts of one tenant, as `expected_posts` shapes them.
fn expected_posts_of(items: &[Map<String, Value>], tenant: &str) -> BTreeMap<String, Value> {
    let theirs: Vec<_> = items
        .iter()
        .filter(|i| i.get("tenant").and_then(Value::as_str) == Some(tenant))
        .cloned()
        .collect();
    expected_posts(&theirs)
}

/// Day one with routes: the items the table held before sluice started are backfilled through
/// the stream's own routes — posts shaped into an index per tenant, comments with their post as
/// routing, other entities counted and skipped — while the stream moves a post to another tenant,
/// creates a tenant, and deletes beside it. The indices end equal to the table, and the deletes
/// were kept (`gc_deletes` raised) on every index the backfill wrote, templated ones included,
/// and put back when it completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_places_existing_items_through_the_routes_beside_the_stream() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    create_app_table(&ddb, StreamViewType::NewAndOldImages).await;
    let post = |p: u32, tenant: &str| {
        let pk = format!("POST#{p}");
        vec![
            ("PK", s(&pk)),
            ("SK", s(&pk)),
            ("tenant", s(tenant)),
            ("title", s(&format!("Post {p}"))),
            (
                "blocks",
                AttributeValue::L(vec![
                    block("paragraph", "text", &format!("First of {p}.")),
                    block("image", "src", &format!("{p}.png")),
                    block("paragraph", "text", &format!("Second of {p}.")),
                ]),
            ),
        ]
    };
    for p in 1..=30 {
        put(&ddb, post(p, if p % 2 == 1 { "acme" } else { "beta" })).await;
        for c in 1..=2 {
            put(
                &ddb,
                vec![
                    ("PK", s(&format!("POST#{p}"))),
                    ("SK", s(&format!("COMMENT#{c}"))),
                    ("body", s(&format!("Comment {c} on {p}"))),
                ],
            )
            .await;
        }
    }
    for u in 1..=10 {
        put(
            &ddb,
            vec![("PK", s(&format!("USER#{u}"))), ("SK", s("PROFILE"))],
        )
        .await;
    }
    let routes = SINGLE_TABLE_ROUTES.replace("index = \"posts\"", "index = \"posts-{tenant}\"");
    assert_ne!(routes, SINGLE_TABLE_ROUTES);
    let extra = format!("{routes}\n[backfill]\non_start = true\nsegments = 3\npage_items = 10\n");
    let db = dir.path().join("sluice.db");
    let es_url = es.url();
    let options = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "App",
        index: "unused",
        db: &db,
        extra: &extra,
    };
    let http_port = free_port();
    let config = dir.path().join("sluice.toml");
    // the stream from now on (what came before is the backfill's), with old images: the posts
    // route places by `tenant`
    let text = config_toml(&options, http_port).replace(
        "[source]\n",
        "[source]\nold_images = true\nstart_position = \"latest\"\n",
    );
    std::fs::write(&config, text).unwrap();
    // one tenant's index exists already (an earlier deployment's): the backfill finds it by the
    // template's wildcard
    let created = reqwest::Client::new()
        .put(format!("{es_url}/posts-acme"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let sluice = Sluice::start_with_config(&config, http_port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;

    // beside the backfill: a post moves to another tenant, one to a tenant no index exists for
    // yet, a post and a comment are deleted, a comment is edited
    put(&ddb, post(1, "beta")).await;
    put(&ddb, post(3, "gamma")).await;
    delete(&ddb, "POST#2", "POST#2").await;
    delete(&ddb, "POST#5", "COMMENT#1").await;
    put(
        &ddb,
        vec![
            ("PK", s("POST#6")),
            ("SK", s("COMMENT#2")),
            ("body", s("edited")),
        ],
    )
    .await;

    let until = std::time::Instant::now() + Duration::from_secs(90);
    while sluice.metric("sluice_backfill_complete", "").await != 1.0 {
        assert!(std::time::Instant::now() < until, "{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = items(&ddb).await;
    for tenant in ["acme", "beta", "gamma"] {
        let expected = expected_posts_of(&table, tenant);
        assert!(!expected.is_empty());
        assert_index_equals(
            &es,
            &format!("posts-{tenant}"),
            &expected,
            Duration::from_secs(60),
        )
        .await;
    }
    let comments = expected_comments(&table);
    assert_eq!(comments.len(), 59);
    assert_index_equals(&es, "comments", &comments, Duration::from_secs(60)).await;
    let routings = es.fake.routings("comments");
    assert_eq!(routings.len(), comments.len());
    for (id, routing) in &routings {
        assert_eq!(id.split('|').next(), Some(routing.as_str()), "{id}");
    }
    assert_eq!(es.fake.stats().routing_mismatches, 0);
    assert!(es.documents("unused").await.is_empty());
    // the ten user profiles were read by the scan and placed nowhere
    let skipped = sluice
        .metric("sluice_records_skipped_total", "reason=\"no_route\"")
        .await;
    assert!(skipped >= 10.0, "{skipped}");
    let backfilled = sluice.metric("sluice_backfill_items_total", "").await;
    assert!(backfilled >= 85.0, "{backfilled}");
    // deletes were kept on the template's index and the fixed one, then put back
    let log = sluice.log_text();
    for index in ["posts-acme", "comments"] {
        assert!(
            log.lines()
                .any(|l| l.contains("deletes are kept while the backfill runs")
                    && l.contains(&format!("index={index}"))),
            "{index}: {log}"
        );
    }
    let settings: Value = reqwest::get(format!("{es_url}/posts-*,comments/_settings"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (index, s) in settings.as_object().unwrap() {
        assert!(
            s["settings"]["index"]["gc_deletes"].is_null(),
            "{index}: {s}"
        );
    }
}

/// A document the index refused under custom routing is dead-lettered with its routing, and
/// replayed with it: it lands on its post's shard, where the later delete finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_dead_letter_is_replayed_with_its_routing() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    create_app_table(&ddb, StreamViewType::NewImage).await;
    let http = reqwest::Client::new();
    let mapping = |score: &str| json!({"mappings": {"properties": {"score": {"type": score}}}});
    let created = http
        .put(format!("{}/comments", es.url()))
        .json(&mapping("long"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let db = dir.path().join("sluice.db");
    let es_url = es.url();
    let options = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "App",
        index: "unused",
        db: &db,
        extra: SINGLE_TABLE_ROUTES,
    };
    let sluice = Sluice::start(&options, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    let comment = |score: &str| {
        vec![
            ("PK", s("POST#9")),
            ("SK", s("COMMENT#1")),
            ("body", s("a comment")),
            ("score", s(score)),
        ]
    };
    put(&ddb, comment("high")).await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let listed: Vec<Value> = loop {
        let rows: Vec<Value> = serde_json::from_str(&dead_letters(&sluice)).unwrap();
        if !rows.is_empty() {
            break rows;
        }
        assert!(std::time::Instant::now() < until, "{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["doc_id"], "POST#9|COMMENT#1");
    assert_eq!(listed[0]["routing"], "POST#9");

    // the fix: the index again with a mapping that takes the value, then the replay
    es.delete_index("comments").await;
    let created = http
        .put(format!("{}/comments", es.url()))
        .json(&mapping("keyword"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let replay = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dead-letters", "--config"])
        .arg(&sluice.config)
        .args(["replay", "--all"])
        .envs(aws_env())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout).to_string()
        + &String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{said}");
    assert!(said.contains("1 indexed"), "{said}");
    assert_eq!(
        es.fake.routings("comments"),
        [("POST#9|COMMENT#1".to_string(), "POST#9".to_string())].into()
    );
    // and the stream's delete, routed by the post, removes it
    delete(&ddb, "POST#9", "COMMENT#1").await;
    assert_index_equals(&es, "comments", &BTreeMap::new(), Duration::from_secs(60)).await;
    assert_eq!(es.fake.stats().routing_mismatches, 0);
}

/// `sluice verify`'s exit code, and its report (with `--json`: the JSON alone).
fn verify(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["verify", "--config"])
        .arg(config)
        .args(args)
        .envs(aws_env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if args.contains(&"--json") {
        // the report alone; what went wrong is on stderr
        assert!(
            !stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return (out.status.code(), stdout);
    }
    (
        out.status.code(),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `verify` through the routes: each item is compared with its shaped document where its route
/// puts it (a tenant's index, with its routing), items no route takes are not missing, and
/// `--extra` finds documents no item has — a ghost, a stale copy in another tenant's index —
/// reading the item's key back from `_id` or the document. `--repair` fixes each at its place;
/// a route whose documents cannot lead back to their item is refused `--extra`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_each_item_with_its_routed_document_and_repair_puts_it_right() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    create_app_table(&ddb, StreamViewType::NewAndOldImages).await;
    let routes = SINGLE_TABLE_ROUTES.replace("index = \"posts\"", "index = \"posts-{tenant}\"");
    let extra = format!("{routes}\n[backfill]\nclock_skew_allowance = \"2s\"\n");
    let db = dir.path().join("sluice.db");
    let es_url = es.url();
    let options = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "App",
        index: "unused",
        db: &db,
        extra: &extra,
    };
    let http_port = free_port();
    let config = dir.path().join("sluice.toml");
    let text =
        config_toml(&options, http_port).replace("[source]\n", "[source]\nold_images = true\n");
    std::fs::write(&config, &text).unwrap();
    let sluice = Sluice::start_with_config(&config, http_port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    for p in 1..=6 {
        let pk = format!("POST#{p}");
        put(
            &ddb,
            vec![
                ("PK", s(&pk)),
                ("SK", s(&pk)),
                ("tenant", s(if p <= 3 { "acme" } else { "beta" })),
                ("title", s(&format!("Post {p}"))),
                (
                    "blocks",
                    AttributeValue::L(vec![block("paragraph", "text", "Hello.")]),
                ),
            ],
        )
        .await;
        put(
            &ddb,
            vec![("PK", s(&pk)), ("SK", s("COMMENT#1")), ("body", s("first"))],
        )
        .await;
    }
    put(&ddb, vec![("PK", s("USER#1")), ("SK", s("PROFILE"))]).await;
    let table = items(&ddb).await;
    assert_index_equals(
        &es,
        "posts-acme",
        &expected_posts_of(&table, "acme"),
        Duration::from_secs(60),
    )
    .await;
    assert_index_equals(
        &es,
        "posts-beta",
        &expected_posts_of(&table, "beta"),
        Duration::from_secs(60),
    )
    .await;
    assert_index_equals(
        &es,
        "comments",
        &expected_comments(&table),
        Duration::from_secs(60),
    )
    .await;

    let (code, out) = verify(&config, &["--extra"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("13 items checked, 1 taken by no route")
            && out.contains("0 missing, 0 different, 0 extra — the index equals the table"),
        "{out}"
    );

    // behind sluice's back: a post deleted, a comment altered (under its routing), a ghost post,
    // a ghost comment, and a copy of an acme post in beta's index
    let acme = es.documents("posts-acme").await;
    let mut altered = es.documents("comments").await["POST#2|COMMENT#1"].clone();
    altered["text"] = json!("changed behind sluice's back");
    es.tamper(vec![
        json!({"delete": {"_index": "posts-acme", "_id": "POST#2"}}),
        json!({"index": {"_index": "comments", "_id": "POST#2|COMMENT#1", "routing": "POST#2"}}),
        altered,
        json!({"index": {"_index": "posts-beta", "_id": "POST#999"}}),
        json!({"PK": "POST#999", "SK": "POST#999", "title": "no such item"}),
        json!({"index": {"_index": "comments", "_id": "POST#1|COMMENT#9", "routing": "POST#1"}}),
        json!({"PK": "POST#1", "SK": "COMMENT#9", "text": "no such item"}),
        json!({"index": {"_index": "posts-beta", "_id": "POST#1"}}),
        acme["POST#1"].clone(),
        // someone else's index that the template's wildcard (`posts-*`) also matches
        json!({"index": {"_index": "posts-archive", "_id": "POST#1"}}),
        acme["POST#1"].clone(),
    ])
    .await;
    let (code, out) = verify(&config, &["--extra", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let found: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (&found["missing"], &found["different"], &found["extra"]),
        (&json!(1), &json!(1), &json!(3)),
        "{found:#}"
    );
    assert_eq!(found["examples"]["missing"], json!(["posts-acme/POST#2"]));
    let extra: Vec<&str> = found["examples"]["extra"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for ghost in [
        "posts-beta/POST#999",
        "comments/POST#1|COMMENT#9",
        "posts-beta/POST#1",
    ] {
        assert!(extra.contains(&ghost), "{ghost}: {found:#}");
    }

    let (code, out) = verify(&config, &["--extra", "--repair", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let repaired: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(repaired["repair"]["indexed"], json!(2), "{repaired:#}");
    assert_eq!(repaired["repair"]["deleted"], json!(3), "{repaired:#}");
    let (code, out) = verify(&config, &["--extra"]);
    assert_eq!(code, Some(0), "{out}");
    assert_index_equals(
        &es,
        "posts-beta",
        &expected_posts_of(&table, "beta"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        es.documents("posts-archive").await.len(),
        1,
        "an index no item is placed in is not sluice's to repair"
    );
    // the repaired comment went back under its routing
    assert_eq!(es.fake.routings("comments")["POST#2|COMMENT#1"], "POST#2");
    assert_eq!(es.fake.stats().routing_mismatches, 0);

    // posts that keep only their title cannot lead back to their item: no --extra for them
    let titles = dir.path().join("titles.toml");
    std::fs::write(
        &titles,
        text.replace("exclude = [\"blocks\"]", "include = [\"title\"]"),
    )
    .unwrap();
    let (code, out) = verify(&titles, &["--extra"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("--extra cannot tell which item a document of route `posts` belongs to"),
        "{out}"
    );
}
