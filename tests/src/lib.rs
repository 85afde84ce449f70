//! Shared fixtures for catga's integration tests: a small shop and a
//! key-value register used by the cluster and fault tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use catga::prelude::*;

pub mod discovery;
pub mod kv;
pub mod linearizability;
pub mod netns;
pub mod node_main;
pub mod process;
pub mod servers;
pub mod tls;

/// A shop with stock and orders.
#[state(name = "tests.shop")]
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Shop {
    pub stock: BTreeMap<String, u32>,
    pub orders: BTreeMap<u64, (String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub enum ShopError {
    UnknownSku,
    OutOfStock { left: u32 },
}

#[command(name = "tests.Restock")]
pub struct Restock {
    pub sku: String,
    pub qty: u32,
}

#[command(name = "tests.PlaceOrder")]
pub struct PlaceOrder {
    pub sku: String,
    pub qty: u32,
}

#[command(name = "tests.Explode")]
pub struct Explode {
    pub touch_first: bool,
}

#[query(name = "tests.GetStock")]
pub struct GetStock {
    pub sku: String,
}

#[query(name = "tests.CountOrders", linearizable)]
pub struct CountOrders;

#[query(name = "tests.Echo")]
pub struct Echo(pub String);

#[event(name = "tests.OrderPlaced")]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    pub id: u64,
    pub sku: String,
}

#[event(name = "tests.Ping")]
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    pub n: u64,
}

#[handler]
pub fn restock(cmd: Restock, shop: &mut Shop) -> u32 {
    let left = shop.stock.entry(cmd.sku).or_default();
    *left += cmd.qty;
    *left
}

#[handler]
pub fn place_order(
    cmd: PlaceOrder,
    shop: &mut Shop,
    ctx: &mut CommandContext,
) -> Result<u64, ShopError> {
    let left = shop.stock.get_mut(&cmd.sku).ok_or(ShopError::UnknownSku)?;
    if *left < cmd.qty {
        return Err(ShopError::OutOfStock { left: *left });
    }
    *left -= cmd.qty;
    let id = ctx.log_index();
    shop.orders.insert(id, (cmd.sku.clone(), cmd.qty));
    ctx.publish(OrderPlaced { id, sku: cmd.sku });
    Ok(id)
}

#[handler]
pub fn explode(cmd: Explode, shop: &mut Shop, ctx: &mut CommandContext) -> u32 {
    if cmd.touch_first {
        shop.stock.insert("exploded".into(), 1);
    }
    ctx.publish(Ping { n: 0 });
    panic!("boom at {}", ctx.log_index())
}

#[handler]
pub fn get_stock(q: GetStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[handler]
pub fn count_orders(_q: CountOrders, shop: &Shop) -> usize {
    shop.orders.len()
}

#[handler]
pub async fn echo(q: Echo) -> String {
    q.0
}

/// Counts every OrderPlaced seen by any event handler in this process.
pub static ORDERS_SEEN: AtomicU64 = AtomicU64::new(0);
/// Sum of Ping.n seen by the async handler.
pub static PINGS_SEEN: AtomicU64 = AtomicU64::new(0);

#[handler]
pub fn count_order(_e: OrderPlaced) {
    ORDERS_SEEN.fetch_add(1, Ordering::SeqCst);
}

#[handler]
pub async fn on_ping(e: Ping, ctx: EventContext) {
    let _ = ctx.log_index();
    PINGS_SEEN.fetch_add(e.n, Ordering::SeqCst);
}

/// Whether this test may run: it needs root (`why` says for what). When
/// not root, prints one line saying so and returns `false` (the test then
/// returns early: skipped); as root (as CI runs) it returns `true` and the
/// test runs.
///
/// ```ignore
/// if !catga_tests::need_root("it mounts a tmpfs") { return; }
/// ```
#[must_use]
pub fn need_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        use std::io::Write;
        let thread = std::thread::current();
        // to the real stderr, not `eprintln!`: the test harness captures
        // that and shows it only when a test fails
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {}: needs root ({why}); run the suite as root to run it",
            thread.name().unwrap_or("this test")
        );
    }
    root
}

pub mod harness {
    //! Starting real multi-node clusters on 127.0.0.1 with ephemeral ports
    //! and temporary data dirs.

    use std::time::Duration;

    use catga::{Node, Result};

    /// A cluster of real nodes in this process.
    pub struct Cluster {
        pub nodes: Vec<Option<Node>>,
        pub addrs: Vec<String>,
        pub dir: tempfile::TempDir,
        pub snapshot_every: u64,
        /// How long `send` keeps trying on every node (10 s unless started
        /// with [`Cluster::start_opts`]).
        pub request_timeout: Duration,
    }

    pub const T: Duration = Duration::from_secs(20);

    pub fn init_tracing() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    }

    impl Cluster {
        /// Starts `n` nodes with ids 1..=n.
        pub async fn start(n: usize) -> Cluster {
            Cluster::start_with(n, 10_000).await
        }

        pub async fn start_with(n: usize, snapshot_every: u64) -> Cluster {
            Cluster::start_opts(n, snapshot_every, Duration::from_secs(10)).await
        }

        /// Starts `n` nodes with the given snapshot interval and request timeout.
        pub async fn start_opts(
            n: usize,
            snapshot_every: u64,
            request_timeout: Duration,
        ) -> Cluster {
            init_tracing();
            let dir = tempfile::tempdir().expect("tempdir");
            let listeners: Vec<std::net::TcpListener> = (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
                .collect();
            let addrs: Vec<String> = listeners
                .iter()
                .map(|l| l.local_addr().expect("addr").to_string())
                .collect();
            let mut c = Cluster {
                nodes: Vec::new(),
                addrs,
                dir,
                snapshot_every,
                request_timeout,
            };
            for (i, l) in listeners.into_iter().enumerate() {
                let node = c
                    .builder(i as u64 + 1)
                    .listener(l)
                    .start()
                    .await
                    .expect("start");
                c.nodes.push(Some(node));
            }
            c
        }

        pub fn builder(&self, id: u64) -> catga::ClusterBuilder {
            let mut b = catga::cluster()
                .node_id(id)
                .data_dir(self.dir.path().join(format!("n{id}")))
                .secret("test-secret")
                .heartbeat_interval(Duration::from_millis(50))
                .election_timeout(Duration::from_millis(300), Duration::from_millis(600))
                .snapshot_every(self.snapshot_every)
                .snapshot_logs_to_keep(if self.snapshot_every < 1000 { 0 } else { 1000 })
                .request_timeout(self.request_timeout);
            if crate::tls::enabled() {
                b = b.tls(crate::tls::config(id));
            }
            for (j, a) in self.addrs.iter().enumerate() {
                if j as u64 + 1 != id {
                    b = b.peer(j as u64 + 1, a.clone());
                }
            }
            b
        }

        pub fn node(&self, id: u64) -> &Node {
            self.nodes[id as usize - 1].as_ref().expect("node is down")
        }

        pub fn up(&self) -> impl Iterator<Item = &Node> {
            self.nodes.iter().flatten()
        }

        /// Waits until every running node agrees on one leader; returns it.
        pub async fn leader(&self) -> u64 {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let mut ls = Vec::new();
                for n in self.up() {
                    let h = n.health();
                    ls.push(if h.role == catga::Role::Leader {
                        Some(h.node_id)
                    } else {
                        None
                    });
                }
                let leaders: Vec<u64> = ls.iter().flatten().copied().collect();
                if leaders.len() == 1 {
                    let l = leaders[0];
                    if self.up().all(|n| n.health().leader == Some(l)) {
                        return l;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no single leader within {T:?}"
                );
                // wait for the next change of any node's view
                let waits = self
                    .up()
                    .map(|n| Box::pin(n.health_changed(Duration::from_millis(100))));
                futures::future::select_all(waits).await;
            }
        }

        /// A node that is up and is not the leader.
        pub async fn follower(&self) -> u64 {
            let l = self.leader().await;
            self.up()
                .map(|n| n.id())
                .find(|id| *id != l)
                .expect("a follower")
        }

        /// Cuts node `id` off from every other node, both ways.
        pub fn isolate(&self, id: u64) {
            let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
            for n in self.up() {
                if n.id() == id {
                    all.iter().for_each(|o| catga::testing::faults(n).block(*o));
                } else {
                    catga::testing::faults(n).block(id);
                }
            }
        }

        /// Removes every fault on every running node.
        pub fn heal(&self) {
            for n in self.up() {
                catga::testing::faults(n).heal();
            }
        }

        /// Stops a node (its tasks end, its data dir stays).
        pub async fn kill(&mut self, id: u64) {
            if let Some(n) = self.nodes[id as usize - 1].take() {
                n.shutdown().await;
            }
        }

        /// Restarts a stopped node from its data dir, on the same address.
        pub async fn restart(&mut self, id: u64) -> Result<()> {
            let addr = self.addrs[id as usize - 1].clone();
            let node = self.builder(id).listen(addr).start().await?;
            self.nodes[id as usize - 1] = Some(node);
            Ok(())
        }

        /// Waits until every running node has applied the same index and
        /// holds the same state; returns that index.
        pub async fn assert_replicas_equal(&self) -> u64 {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let prints: Vec<(u64, Vec<u8>)> = self
                    .up()
                    .map(|n| catga::testing::state_fingerprint(n).expect("fingerprint"))
                    .collect();
                let max = prints.iter().map(|p| p.0).max().unwrap_or(0);
                if prints.iter().all(|p| p.0 == max) {
                    let first = &prints[0].1;
                    assert!(
                        prints.iter().all(|p| &p.1 == first),
                        "replicas applied the same index {max} but differ"
                    );
                    return max;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "replicas did not converge: {:?}",
                    prints.iter().map(|p| p.0).collect::<Vec<_>>()
                );
                for n in self.up() {
                    let _ = n.wait_applied(max, Duration::from_millis(200)).await;
                }
            }
        }

        pub async fn shutdown(mut self) {
            for i in 0..self.nodes.len() {
                self.kill(i as u64 + 1).await;
            }
        }
    }
}

/// (node id, sku, log index) of every OrderPlaced handled, by any node in this process.
pub static ORDER_LOG: std::sync::Mutex<Vec<(u64, String, u64)>> = std::sync::Mutex::new(Vec::new());

#[handler]
pub fn record_order(e: OrderPlaced, ctx: EventContext) {
    if let Ok(mut log) = ORDER_LOG.lock() {
        log.push((ctx.node_id(), e.sku, ctx.log_index()));
    }
}
