//! Mesh micro-benchmark on loopback: request/response latency and one-way message throughput
//! between two nodes, next to the same patterns over in-process tokio channels.
//!
//! `cargo run --release -p switchyard-cluster --example mesh_bench [requests] [messages]`

use std::time::{Duration, Instant};

use switchyard_cluster::mesh::{self, Incoming, MeshConfig};
use switchyard_cluster::tls;
use tokio::sync::{mpsc, oneshot};

const PAYLOAD: usize = 64;
const KIND: u16 = 2;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let messages: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    tls::create_ca(&ca)?;
    let mut nodes = Vec::new();
    for id in [1u64, 2] {
        let node_dir = dir.path().join(format!("node-{id}"));
        tls::issue_node_cert(&ca, id, "bench", &node_dir)?;
        let mut config = MeshConfig::new(
            id,
            "127.0.0.1:0".parse()?,
            tls::load_node_identity(&node_dir)?,
        );
        // Big enough that the burst below is measured, not dropped.
        config.send_queue = messages;
        nodes.push(mesh::start(config).await?);
    }
    let (n2, mut rx2) = nodes.pop().ok_or("node 2")?;
    let (n1, _rx1) = nodes.pop().ok_or("node 1")?;
    n1.set_peer(2, n2.local_addr());

    // Node 2 answers requests at once and counts one-way messages.
    let (count_tx, mut count_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut received = 0usize;
        while let Some(item) = rx2.recv().await {
            match item {
                Incoming::Request { payload, reply, .. } => {
                    let _ = reply.send(payload);
                }
                Incoming::Message { .. } => {
                    received += 1;
                    let _ = count_tx.send(received);
                }
            }
        }
    });

    let timeout = Duration::from_secs(5);
    for _ in 0..1000 {
        n1.request(2, KIND, vec![0; PAYLOAD], timeout).await?;
    }
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        n1.request(2, KIND, vec![0; PAYLOAD], timeout).await?;
        samples.push(start.elapsed());
    }
    report("mesh request/response", &mut samples);

    let concurrency = 32;
    let per_task = requests / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let n1 = n1.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    n1.request(2, KIND, vec![0; PAYLOAD], timeout).await?;
                }
                Ok::<_, mesh::MeshError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    println!(
        "mesh requests, {concurrency} in flight: {:.0} req/s",
        (concurrency * per_task) as f64 / start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    for _ in 0..messages {
        n1.send(2, 1, vec![0; PAYLOAD])?;
    }
    let mut received = 0;
    while received < messages {
        received = tokio::time::timeout(timeout, count_rx.recv())
            .await?
            .ok_or("counter stopped")?;
    }
    let elapsed = start.elapsed();
    println!(
        "mesh one-way ({PAYLOAD} B): {messages} in {elapsed:.2?} = {:.0} msg/s (dropped: {})",
        messages as f64 / elapsed.as_secs_f64(),
        n1.peers().first().map_or(0, |p| p.dropped)
    );
    n1.shutdown().await;
    n2.shutdown().await;

    // Baselines: the same patterns between two tasks of this process.
    let (req_tx, mut req_rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<Vec<u8>>)>(1024);
    tokio::spawn(async move {
        while let Some((payload, reply)) = req_rx.recv().await {
            let _ = reply.send(payload);
        }
    });
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        req_tx.send((vec![0; PAYLOAD], tx)).await?;
        rx.await?;
        samples.push(start.elapsed());
    }
    report("local mpsc+oneshot round trip", &mut samples);

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let consumer = tokio::spawn(async move {
        let mut n = 0usize;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let start = Instant::now();
    for _ in 0..messages {
        tx.send(vec![0; PAYLOAD]).await?;
    }
    drop(tx);
    let n = consumer.await?;
    println!(
        "local mpsc one-way: {n} in {:.2?} = {:.0} msg/s",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name}: n={} p50={:.1?} p99={:.1?} max={:.1?} mean={:.1?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        mean
    );
}
