#!/usr/bin/env bash
# One-command demo on local emulators: moto (DynamoDB + Streams) and the Elasticsearch test
# server. Creates a `Posts` table of blog posts made of blocks, runs sluice, writes, edits and
# deletes a few posts, and prints what a search of the index returns.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_moto
echo "building sluice and the Elasticsearch test server…"
cargo build --quiet --bin sluice -p sluice
cargo build --quiet --bin es-fake -p es-fake

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

MOTO_PORT=$(free_port); ES_PORT=$(free_port); HTTP_PORT=$(free_port)
"$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 & PIDS+=($!)
target/debug/es-fake --listen "127.0.0.1:$ES_PORT" >"$WORK/es.log" 2>&1 & PIDS+=($!)
wait_port "$MOTO_PORT"; wait_port "$ES_PORT"

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export MOTO_URL="http://127.0.0.1:$MOTO_PORT" ES_URL="http://127.0.0.1:$ES_PORT"
PY="$MOTO_VENV/bin/python"

"$PY" - <<'PY'
import os, boto3
ddb = boto3.client("dynamodb", endpoint_url=os.environ["MOTO_URL"])
ddb.create_table(TableName="Posts", BillingMode="PAY_PER_REQUEST",
    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
print("created table Posts with a NEW_AND_OLD_IMAGES stream")
PY

cat >"$WORK/sluice.toml" <<TOML
[source]
type = "dynamodb_streams"
table = "Posts"
endpoint_url = "$MOTO_URL"
poll_interval = "200ms"
[sink]
url = "$ES_URL"
index = "posts"
[batch]
max_wait = "200ms"
[checkpoint]
path = "$WORK/sluice.db"
[http]
listen = "127.0.0.1:$HTTP_PORT"
TOML
target/debug/sluice run --config "$WORK/sluice.toml" 2>"$WORK/sluice.log" & SLUICE=$!; PIDS+=($SLUICE)
for _ in $(seq 1 100); do http_get "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "sluice is running: $(http_get "http://127.0.0.1:$HTTP_PORT/readyz")"

"$PY" - <<'PY'
import os, json, time, urllib.request, boto3
ddb = boto3.client("dynamodb", endpoint_url=os.environ["MOTO_URL"])
S = lambda s: {"S": s}
def para(t): return {"M": {"type": S("paragraph"), "text": S(t)}}
def image(u, alt): return {"M": {"type": S("image"), "url": S(u), "alt": S(alt)}}
def post(pid, title, blocks, tags, views):
    return {"id": S(pid), "title": S(title), "body": {"L": blocks}, "tags": {"SS": tags}, "views": {"N": str(views)}}

print("\n-- writing three posts, editing one, deleting one")
ddb.put_item(TableName="Posts", Item=post("hello-world", "Hello, world", [para("First post!"), image("https://img.example/hi.png", "a wave")], ["intro"], 1))
ddb.put_item(TableName="Posts", Item=post("cdc-101", "Change data capture 101", [para("Streams carry every change."), para("sluice applies them in order.")], ["cdc", "streams"], 42))
ddb.put_item(TableName="Posts", Item=post("draft", "An unfinished draft", [para("TODO")], ["draft"], 0))
ddb.update_item(TableName="Posts", Key={"id": S("cdc-101")},
    UpdateExpression="SET title = :t, #v = #v + :n", ExpressionAttributeNames={"#v": "views"},
    ExpressionAttributeValues={":t": S("Change data capture 101 (updated)"), ":n": {"N": "100"}})
ddb.delete_item(TableName="Posts", Key={"id": S("draft")})

es = os.environ["ES_URL"]
def search():
    req = urllib.request.Request(es + "/posts/_search", data=json.dumps({"query": {"match_all": {}}, "size": 100}).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))["hits"]["hits"]
for _ in range(100):
    try:
        hits = search()
        if sorted(h["_id"] for h in hits) == ["cdc-101", "hello-world"] and any("updated" in h["_source"]["title"] for h in hits):
            break
    except Exception:
        pass
    time.sleep(0.1)
print("\n-- GET /posts/_search  (match_all)")
for h in search():
    s = h["_source"]
    blocks = ", ".join(b["type"] for b in s["body"])
    print(f'  {h["_id"]:<12} "{s["title"]}"  views={s["views"]}  tags={s["tags"]}  blocks=[{blocks}]')
print("  (the draft was deleted in DynamoDB, so it is gone from the index)")
PY

echo
echo "-- a few of sluice's metrics (http://127.0.0.1:$HTTP_PORT/metrics)"
http_get "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^sluice_(records_read_total|documents_total|shards_owned)' || true
kill -TERM "$SLUICE"; wait "$SLUICE" && echo && echo "sluice stopped cleanly on SIGTERM (exit 0)"
