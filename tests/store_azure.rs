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
use blockrep::store::StoreConfig;
use flow::{hydrated, keys, snapshot};

fn config(a: &Azurite, endpoint: std::net::SocketAddr, prefix: &str) -> StoreConfig {
    let mut options = a.options();
    for (k, v) in &mut options {
        if k == "azure_storage_endpoint" {
            *v = format!("http://{endpoint}/{}", azurite::ACCOUNT);
        }
    }
    flow::test_config(format!("az://{CONTAINER}/{prefix}"), options)
}

#[test]
fn cycles_ship_sealed_to_azure_through_cuts_and_every_point_hydrates_exactly() {
    let t = tempfile::tempdir().unwrap();
    let Some(a) = Azurite::start(&t.path().join("azurite")) else {
        return;
    };
    let proxy = flow::faulty_http_proxy(a.addr, 13);
    let direct = config(&a, a.addr, "fleet");
    let states = flow::cycles_through_faults(
        &direct,
        &config(&a, proxy.addr, "fleet"),
        &proxy,
        &a.root,
        t.path(),
    );
    // Retention there: points 1 and 2 fold into a base at 3, their blobs
    // deleted.
    flow::compaction_keeps_the_newest_three(&direct, &states, t.path());
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
