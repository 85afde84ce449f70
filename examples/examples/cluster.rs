//! The main demo: an embedded 3-node cluster on 127.0.0.1.
//!
//! `cargo run --example cluster`
//!
//! It writes through a follower, reads on every node, kills the leader,
//! keeps writing through the new one, restarts the old leader and checks it
//! catches up; then it checks that no acknowledged write was lost or applied
//! twice and that every replica holds the same state.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use catga::{Node, Role};
use catga_examples::*;

struct Demo {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    nodes: Vec<Option<Node>>,
}

impl Demo {
    fn builder(&self, id: u64) -> catga::ClusterBuilder {
        let mut b = catga::cluster()
            .node_id(id)
            .data_dir(self.dir.path().join(format!("node-{id}")))
            .secret("demo-secret")
            .snapshot_every(100);
        for (i, a) in self.addrs.iter().enumerate() {
            if i as u64 + 1 != id {
                b = b.peer(i as u64 + 1, a.clone());
            }
        }
        b
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    async fn leader(&self) -> catga::Result<u64> {
        let any = self.running().next().expect("a running node");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = any.wait_for_leader(Duration::from_secs(10)).await?;
            if self
                .running()
                .any(|n| n.id() == leader && n.health().role == Role::Leader)
            {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(catga::Error::Timeout {
                    waited: Duration::from_secs(10),
                    reason: catga::error::TimeoutReason::NoLeader,
                });
            }
            any.health_changed(Duration::from_millis(100)).await;
        }
    }
}

/// Places an order for one apple with the client's reference.
async fn order(node: &Node, reference: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let placed = node
        .send(PlaceOrder {
            reference,
            sku: "apple".into(),
            qty: 1,
        })
        .await?;
    Ok(placed.map_err(|e| format!("order refused: {e:?}"))?)
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        println!("  ✓ {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

async fn run() -> Result<String, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let mut demo = Demo {
        dir,
        addrs,
        nodes: Vec::new(),
    };
    println!(
        "starting 3 nodes: {:?} (data in {})",
        demo.addrs,
        demo.dir.path().display()
    );
    for (i, l) in listeners.into_iter().enumerate() {
        let node = demo.builder(i as u64 + 1).listener(l).start().await?;
        demo.nodes.push(Some(node));
    }
    let leader = demo.leader().await?;
    let follower = demo
        .running()
        .map(|n| n.id())
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    println!("leader is node {leader}; writing through follower node {follower}");

    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // reference -> order id
    let mut reference = 0u64;
    demo.node(follower)
        .send(Restock {
            sku: "apple".into(),
            qty: 10_000,
        })
        .await?;
    for _ in 0..50 {
        reference += 1;
        let id = order(demo.node(follower), reference).await?;
        acked.insert(reference, id);
    }
    let refused = demo
        .node(follower)
        .send(PlaceOrder {
            reference: 0,
            sku: "pear".into(),
            qty: 1,
        })
        .await?;
    println!(
        "  50 orders placed through node {follower}; an order for an unknown sku returns {refused:?}"
    );
    check(
        refused == Err(ShopError::UnknownSku),
        "handler errors come back typed",
    )?;

    println!("reading on every node:");
    let count = demo.node(follower).send(CountOrders).await?; // linearizable by type
    for n in demo.running() {
        n.query(
            GetStock {
                sku: "apple".into(),
            },
            catga::Consistency::Linearizable,
        )
        .await?;
        let stock = n
            .send(GetStock {
                sku: "apple".into(),
            })
            .await?;
        println!(
            "  node {}: apple stock {stock:?}, role {:?}",
            n.id(),
            n.health().role
        );
        check(
            stock == Some(10_000 - 50),
            &format!("node {} reads the replicated stock locally", n.id()),
        )?;
    }
    check(
        count == 50,
        "a linearizable count on a follower sees all 50 orders",
    )?;

    println!("killing the leader (node {leader}) while writing through node {follower}");
    let killed_at = Instant::now();
    let writer = demo.node(follower).clone();
    let old = demo.nodes[leader as usize - 1]
        .take()
        .ok_or("leader missing")?;
    let kill = tokio::spawn(async move { old.shutdown().await });
    let mut failover_ms = None;
    for _ in 0..100 {
        reference += 1;
        let id = order(&writer, reference).await?;
        acked.insert(reference, id);
        if failover_ms.is_none()
            && writer.health().leader != Some(leader)
            && writer.health().leader.is_some()
        {
            failover_ms = Some(killed_at.elapsed().as_millis() as u64);
        }
    }
    kill.await?;
    let new_leader = demo.leader().await?;
    let failover_ms = failover_ms.unwrap_or_else(|| killed_at.elapsed().as_millis() as u64);
    println!("  new leader: node {new_leader}; writes resumed {failover_ms} ms after the kill");
    check(new_leader != leader, "a new leader was elected")?;

    println!("restarting node {leader} from its data dir");
    let addr = demo.addrs[leader as usize - 1].clone();
    let restarted = demo.builder(leader).listen(addr).start().await?;
    demo.nodes[leader as usize - 1] = Some(restarted);
    for _ in 0..20 {
        reference += 1;
        let id = order(demo.node(new_leader), reference).await?;
        acked.insert(reference, id);
    }
    let target = demo.node(new_leader).health().applied_index.unwrap_or(0);
    demo.node(leader)
        .wait_applied(target, Duration::from_secs(10))
        .await?;
    println!("  node {leader} caught up to index {target}");

    // checks on every replica
    let mut prints = Vec::new();
    let (mut lost, mut duplicated) = (0usize, 0usize);
    for n in demo.running() {
        n.wait_applied(target, Duration::from_secs(10)).await?;
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        n.read_state::<Shop, _>(|s| {
            for o in s.orders.values() {
                *seen.entry(o.reference).or_default() += 1;
            }
        });
        lost += acked.keys().filter(|r| !seen.contains_key(r)).count();
        duplicated += seen.values().filter(|c| **c > 1).count();
        prints.push(catga::testing::state_fingerprint(n)?);
    }
    let replicas_equal = prints.windows(2).all(|w| w[0] == w[1]);
    check(lost == 0, "no acknowledged write lost")?;
    check(duplicated == 0, "no write applied twice")?;
    check(replicas_equal, "all replicas hold the same state")?;
    for n in demo.nodes.iter().flatten() {
        n.shutdown().await;
    }
    Ok(format!(
        "demo ok: writes={} failover_ms={failover_ms} lost={lost} duplicated={duplicated} replicas_equal={replicas_equal}",
        acked.len() + 1
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    match run().await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
