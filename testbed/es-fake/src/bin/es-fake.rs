//! `es-fake --listen 127.0.0.1:9200 [--upstream URL]`: the test server as a process (demo, manual
//! runs). Faults: PUT /_fake/faults with a JSON body; POST /_fake/hold and /_fake/release.

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:9200".to_string();
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen needs an address"),
            "--upstream" => upstream = args.next(),
            other => {
                eprintln!("es-fake: unknown argument {other}; usage: es-fake [--listen ADDR] [--upstream URL]");
                std::process::exit(64);
            }
        }
    }
    let addr: std::net::SocketAddr = listen
        .parse()
        .expect("--listen must be an address like 127.0.0.1:9200");
    assert!(
        addr.ip().is_loopback(),
        "es-fake binds to loopback addresses only"
    );
    let es = es_fake::FakeEs::start_with(addr, upstream)
        .await
        .expect("binding the listen address");
    println!("es-fake listening on {}", es.url());
    let _ = tokio::signal::ctrl_c().await;
}
