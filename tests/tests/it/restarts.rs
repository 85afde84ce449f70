//! A node that restarts never deposes a healthy leader: it asks before it
//! campaigns (pre-vote), so the leader's term survives any number of
//! `kill -9` + restarts of a follower. `CATGA_RESTARTS` sets how many
//! (default 6) and the test prints the disruption rate.

use std::time::{Duration, Instant};

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(30);

fn field(h: &str, i: usize) -> String {
    h.split_whitespace().nth(i).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_follower_never_deposes_the_leader() {
    let restarts: usize = std::env::var("CATGA_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    // the library's default election timeout: a restarted node times out
    // before the leader's reconnect backoff (up to 1 s) brings it heartbeats
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec {
            election_ms: Some((150, 300)),
            ..Spec::member(i, &addrs, dir.path())
        })
        .collect();
    let mut procs: Vec<Option<Proc>> = Vec::new();
    for s in &specs {
        procs.push(Some(Proc::start(s).await.unwrap()));
    }
    let ready = |f: &[&str]| f.len() == 5 && f[2] != "none" && f[4] == "true";
    let h = procs[0]
        .as_ref()
        .unwrap()
        .wait_health(T, ready)
        .await
        .unwrap();
    let leader: usize = field(&h, 2).parse().unwrap();
    let lp = procs[leader - 1].as_ref().unwrap();
    let term0 = field(&lp.ok("health").await.unwrap(), 1);
    let victim = leader % 3 + 1;
    let mut disruptions = 0;
    let mut term = term0.clone();
    for round in 0..restarts {
        procs[victim - 1].take().unwrap().kill9().await;
        // writes go on while it is down, long enough for the leader's
        // reconnect backoff to grow
        let lp = procs[leader - 1].as_ref().unwrap();
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            lp.ok(&format!("restock r{round} 1")).await.unwrap();
        }
        procs[victim - 1] = Some(Proc::start(&specs[victim - 1]).await.unwrap());
        let v = procs[victim - 1].as_ref().unwrap();
        v.wait_health(T, ready).await.unwrap();
        // keep writing through the restarted node for a while: a disruptive
        // election comes 0.2-0.6 s after it starts
        let until = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < until {
            v.ok("restock busy 1").await.unwrap();
        }
        let lp = procs[leader - 1].as_ref().unwrap();
        let now = field(&lp.ok("health").await.unwrap(), 1);
        if now != term {
            disruptions += 1;
            term = now;
        }
    }
    println!(
        "restarts={restarts} disruptions={disruptions} leader_term_before={term0} after={term}"
    );
    assert_eq!(
        disruptions, 0,
        "{disruptions} of {restarts} restarts of a follower changed the leader's term"
    );
    for p in procs.into_iter().flatten() {
        p.quit().await;
    }
}
