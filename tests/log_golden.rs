//! The delta-log format against a committed golden file.
//!
//! `tests/golden/delta_v1.brlog` is what a fixed log writes. A change to
//! the bytes fails here until the format version is bumped on purpose and
//! the file regenerated with `BLOCKREP_BLESS=1`.

mod common;

use blockrep::log::{
    Consistency, GroupInfo, LogHeader, LogKind, LogReader, LogWriter, ReadOptions, WriterOptions,
};
use blockrep::{DiskId, Extent, Geometry};

const GOLDEN: &str = "tests/golden/delta_v1.brlog";

fn geo() -> Geometry {
    Geometry::new(100_000, 4096).unwrap() // 25 blocks, the last one short
}

fn reference() -> Vec<u8> {
    let h = LogHeader {
        disk_id: DiskId(*b"golden-disk-id!!"),
        epoch: 7,
        salt: 0x0123_4567_89ab_cdef,
        sequence: 42,
        base_sequence: 41,
        base_digest: blockrep::log::Digest([0x11; 32]),
        geometry: geo(),
        kind: LogKind::Delta,
        consistency: Consistency::App,
        label: "nightly".into(),
        group: Some(GroupInfo {
            id: [0x22; 16],
            members: 2,
        }),
        created_ns: 1_700_000_000_000_000_000,
        copies: false,
    };
    let mut w = LogWriter::new(
        Vec::new(),
        h,
        WriterOptions {
            record_bytes: 8192,
            threads: 1,
        },
    )
    .unwrap();
    w.add_block(0, &[b'x'; 4096]).unwrap();
    w.add_block(1, &[b'y'; 4096]).unwrap();
    w.add_zero(Extent::new(2, 3)).unwrap();
    let mut rnd = vec![0u8; 4096];
    common::Rng(11).fill(&mut rnd);
    w.add_block(10, &rnd).unwrap();
    w.add_block(24, &[b'z'; 100_000 - 24 * 4096]).unwrap();
    w.finish().unwrap().0
}

#[test]
fn writer_produces_the_golden_bytes() {
    let got = reference();
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read(GOLDEN).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        (got.len(), first_diff),
        (want.len(), None),
        "delta log format changed; bump the version"
    );
}

#[test]
fn golden_log_reads_back_its_contents() {
    let bytes = std::fs::read(GOLDEN).unwrap();
    let mut r = LogReader::new(&bytes[..], ReadOptions::default()).unwrap();
    let h = r.header().clone();
    assert_eq!(
        (h.epoch, h.sequence, h.base_sequence, h.label.as_str()),
        (7, 42, 41, "nightly")
    );
    assert_eq!(h.consistency, Consistency::App);
    assert_eq!(
        h.group,
        Some(GroupInfo {
            id: [0x22; 16],
            members: 2
        })
    );
    let mut blocks = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        for (b, d) in rec.blocks(geo()) {
            blocks.push((
                b,
                match d {
                    blockrep::log::Block::Data(d) => Some((d.len(), d[0])),
                    blockrep::log::Block::Zero => None,
                    c @ blockrep::log::Block::CopyOf(_) => {
                        panic!("golden log without copies holds {c:?}")
                    }
                },
            ));
        }
    }
    assert!(r.is_complete());
    let t = r.trailer().unwrap();
    assert_eq!((t.records, t.blocks, t.data_blocks), (2, 7, 4));
    let first_random = {
        let mut rnd = vec![0u8; 8];
        common::Rng(11).fill(&mut rnd);
        rnd[0]
    };
    assert_eq!(
        blocks,
        vec![
            (0, Some((4096, b'x'))),
            (1, Some((4096, b'y'))),
            (2, None),
            (3, None),
            (4, None),
            (10, Some((4096, first_random))),
            (24, Some((100_000 - 24 * 4096, b'z'))),
        ]
    );
}
