//! Runs a fake API server until Ctrl-C, for trying clients by hand:
//! `cargo run -p sigil-fake-kube --example fake-kube -- /tmp/kubeconfig [--tls]`, then
//! `kubectl --kubeconfig /tmp/kubeconfig get pods -A`.

use serde_json::json;
use sigil_fake_kube::FakeKube;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map(String::as_str).unwrap_or("kubeconfig");
    let kube = if args.iter().any(|a| a == "--tls") {
        FakeKube::start_tls().await?
    } else {
        FakeKube::start().await?
    };
    kube.apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));
    kube.apply(json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]}, "status": {"phase": "Running"}}));
    kube.write_kubeconfig(std::path::Path::new(path))?;
    println!("serving {} (kubeconfig {path}); Ctrl-C stops", kube.url());
    tokio::signal::ctrl_c().await?;
    for r in kube.requests() {
        println!("{} {}?{}", r.method, r.path, r.query);
    }
    Ok(())
}
