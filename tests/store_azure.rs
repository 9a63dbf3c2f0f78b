//! Replication to Azure Blob Storage through the same client library, on
//! a real Azurite server on loopback (installed by scripts/test.sh): the
//! scenarios every store passes (cycles shipped sealed through a proxy
//! that cuts connections and answers 503, every point hydrated exactly,
//! no plain block in the server's storage; a second writer fenced; two
//! writers racing to create a disk's manifest, decided by Azure's own
//! conditional writes), then compaction there.
#![cfg(all(feature = "s3", feature = "net"))]

#[path = "common/azurite.rs"]
mod azurite;
mod common;
#[path = "common/store_flow.rs"]
mod flow;
mod net_common;

use azurite::{Azurite, CONTAINER};
use blockrep::store::{compact, StoreConfig, StorePolicy};
use flow::{hydrated, keys, snapshot, work_dir, ID};
use net_common::proxy::{Faults, Proxy};
use std::time::Duration;

fn config(a: &Azurite, endpoint: std::net::SocketAddr, prefix: &str) -> StoreConfig {
    let mut c = StoreConfig::new(format!("az://{CONTAINER}/{prefix}"));
    c.options = a.options();
    for (k, v) in &mut c.options {
        if k == "azure_storage_endpoint" {
            *v = format!("http://{endpoint}/{}", azurite::ACCOUNT);
        }
    }
    c.timeout = Duration::from_secs(5);
    c.retries = 2;
    c
}

#[test]
fn cycles_ship_sealed_to_azure_through_cuts_and_every_point_hydrates_exactly() {
    let t = tempfile::tempdir().unwrap();
    let Some(a) = Azurite::start(&t.path().join("azurite")) else {
        return;
    };
    let proxy = Proxy::start(
        a.addr,
        Faults {
            cut_within: Some(7 << 20),
            drop_answer_percent: 30,
            stall_per_mille: 2,
            stall: Duration::from_millis(300),
            refuse_percent: 15,
            ..Faults::NONE
        },
        13,
    );
    let direct = config(&a, a.addr, "fleet");
    let states = flow::cycles_through_faults(
        &direct,
        &config(&a, proxy.addr, "fleet"),
        &proxy,
        &a.root,
        t.path(),
    );
    // Retention there: points 1 and 2 fold into a base at 3, their blobs
    // deleted; the rest stay exact.
    let policy = StorePolicy {
        keep_last: 3,
        grace: Duration::ZERO,
    };
    let r = compact(&direct, &keys(), ID, work_dir(&t.path().join("w")), policy).unwrap();
    assert_eq!(
        (r.base, r.dropped.clone(), r.deleted),
        (Some(3), vec![1, 2], 3),
        "{r:?}"
    );
    for (i, want) in states.iter().enumerate().skip(2) {
        let point = i as u64 + 1;
        let got = hydrated(
            &direct,
            &keys(),
            &t.path().join(format!("k{point}")),
            Some(point),
        );
        assert!(
            got.unwrap() == *want,
            "point {point} after compaction differs"
        );
    }
}

#[test]
fn a_second_writer_is_fenced_and_racing_writers_leave_one_chain() {
    let t = tempfile::tempdir().unwrap();
    let Some(a) = Azurite::start(&t.path().join("azurite")) else {
        return;
    };
    let c = config(&a, a.addr, "fence");
    let ((_, disk), _, _) = flow::a_second_writer_is_fenced(&c);
    assert_eq!(
        hydrated(&c, &keys(), &t.path().join("ok"), None).unwrap(),
        snapshot(&*disk)
    );
    flow::two_writers_racing_one_wins(&config(&a, a.addr, "race"), t.path());
}
