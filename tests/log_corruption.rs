//! Every way a log can be damaged is refused, or, with `TailPolicy::StopAtDamage`, yields
//! exactly the verified prefix.

mod common;

use blockrep::log::{
    verify, LogHeader, LogKind, LogReader, LogWriter, MappedLog, ReadOptions, Record, TailPolicy,
    WriterOptions,
};
use blockrep::{DiskId, ErrorKind, Extent, Geometry};

fn geo() -> Geometry {
    Geometry::new(1 << 20, 4096).unwrap()
}

/// A small log: compressible records, a zero extent, a raw record, and a
/// copy of the raw record's block.
fn small_log(salt: u64) -> Vec<u8> {
    let mut h = LogHeader::new(DiskId([5; 16]), geo(), LogKind::Delta, 3, 12).unwrap();
    h.salt = salt;
    h.label = "pre-upgrade".into();
    let mut w = LogWriter::new(
        Vec::new(),
        h,
        WriterOptions {
            record_bytes: 4096,
            threads: 1,
        },
    )
    .unwrap();
    w.add_block(1, &[b'a'; 4096]).unwrap();
    w.add_block(2, &[b'b'; 4096]).unwrap();
    w.add_zero(Extent::new(3, 5)).unwrap();
    let mut rnd = vec![0u8; 4096];
    common::Rng(3).fill(&mut rnd);
    w.add_block(40, &rnd[..]).unwrap();
    w.add_block(41, &[b'c'; 4096]).unwrap();
    w.add_block(42, &rnd[..]).unwrap(); // a copy of block 40
    w.finish().unwrap().0
}

fn records(bytes: &[u8], tail: bool) -> blockrep::Result<(Vec<Record>, bool)> {
    let mut r = LogReader::new(
        bytes,
        ReadOptions {
            tail: if tail {
                TailPolicy::StopAtDamage
            } else {
                TailPolicy::Refuse
            },
            ..Default::default()
        },
    )?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((out, r.is_complete()))
}

/// End offset of each record (after its CRC), in order.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let (recs, _) = records(bytes, false).unwrap();
    let mut ends: Vec<usize> = recs.iter().skip(1).map(|r| r.offset as usize).collect();
    let t = verify(bytes, ReadOptions::default())
        .unwrap()
        .trailer
        .offset as usize;
    ends.push(t);
    ends
}

#[test]
fn every_truncation_is_refused_or_a_verified_prefix() {
    let log = small_log(9);
    let (all, complete) = records(&log, false).unwrap();
    assert!(complete);
    assert_eq!(all.len(), 5);
    let ends = record_ends(&log);
    let header_len = all[0].offset as usize;
    for cut in 0..log.len() {
        let part = &log[..cut];
        let e = records(part, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "strict, cut at {cut}");
        assert!(verify(part, ReadOptions::default()).is_err());
        match records(part, true) {
            Err(e) => {
                assert!(cut < header_len, "tail mode failed at {cut}: {e}");
                assert_eq!(e.kind(), ErrorKind::Corrupt);
            }
            Ok((prefix, complete)) => {
                assert!(!complete, "cut at {cut} reported complete");
                let whole = ends.iter().filter(|&&end| end <= cut).count();
                assert_eq!(prefix, all[..whole.min(all.len())].to_vec(), "cut at {cut}");
            }
        }
    }
}

#[test]
fn every_bit_flip_is_refused_or_a_verified_prefix() {
    let log = small_log(9);
    let (all, _) = records(&log, false).unwrap();
    let header_len = all[0].offset as usize;
    let ends = record_ends(&log);
    for byte in 0..log.len() {
        for bit in 0..8 {
            let mut bad = log.clone();
            bad[byte] ^= 1 << bit;
            assert!(
                records(&bad, false).is_err(),
                "strict accepted a flip at {byte}.{bit}"
            );
            match records(&bad, true) {
                Err(_) => assert!(
                    byte < header_len,
                    "tail mode failed on a flip at {byte}.{bit}"
                ),
                Ok((prefix, complete)) => {
                    assert!(!complete);
                    // Exactly the records wholly before the flipped byte.
                    let n = ends.iter().filter(|&&end| end <= byte).count();
                    assert_eq!(prefix, all[..n].to_vec(), "flip at {byte}.{bit}");
                }
            }
        }
    }
}

#[test]
fn a_record_spliced_from_another_log_is_refused() {
    let a = small_log(1);
    let b = small_log(2); // same content, another salt
    let (ra, _) = records(&a, false).unwrap();
    let (rb, _) = records(&b, false).unwrap();
    // Replace a's second record with b's (same length, same content).
    let (s, e) = (ra[1].offset as usize, ra[2].offset as usize);
    assert_eq!(e - s, (rb[2].offset - rb[1].offset) as usize);
    let mut spliced = a.clone();
    spliced[s..e].copy_from_slice(&b[rb[1].offset as usize..rb[2].offset as usize]);
    assert_ne!(spliced, a);
    let err = records(&spliced, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.context().offset, Some(s as u64));
}

#[test]
fn wrong_disk_or_epoch_is_a_mismatch() {
    let log = small_log(1);
    let other = ReadOptions {
        disk: Some(DiskId([6; 16])),
        ..Default::default()
    };
    assert_eq!(
        verify(&log[..], other).unwrap_err().kind(),
        ErrorKind::Mismatch
    );
    let epoch = ReadOptions {
        epoch: Some(4),
        ..Default::default()
    };
    let e = verify(&log[..], epoch).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
    assert_eq!(e.context().sequence, Some(12));
    let right = ReadOptions {
        disk: Some(DiskId([5; 16])),
        epoch: Some(3),
        tail: TailPolicy::Refuse,
    };
    assert_eq!(verify(&log[..], right).unwrap().trailer.blocks, 10);
}

fn fix_header_crc(b: &mut [u8]) {
    let len = u16::from_le_bytes([b[10], b[11]]) as usize;
    let crc = crc32fast::hash(&b[..len - 4]);
    b[len - 4..len].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the CRC of the record at `start..end` (its CRC at `end`).
fn fix_record_crc(b: &mut [u8], start: usize, end: usize, salt: u64) {
    let mut h = crc32fast::Hasher::new_with_initial((salt ^ (salt >> 32)) as u32);
    h.update(&b[start..end]);
    let crc = h.finalize();
    b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn unknown_features_codecs_and_absurd_lengths_are_refused() {
    let log = small_log(7);
    let (recs, _) = records(&log, false).unwrap();

    let mut b = log.clone();
    b[12] = 2; // an incompatible feature bit this build does not know
    fix_header_crc(&mut b);
    assert_eq!(
        verify(&b[..], ReadOptions::default()).unwrap_err().kind(),
        ErrorKind::Unsupported
    );

    let mut b = log.clone();
    b[16] = 1; // a compatible feature bit is ignored
    fix_header_crc(&mut b);
    verify(&b[..], ReadOptions::default()).unwrap();

    let mut b = log.clone();
    b[8] = 2; // a newer version
    assert_eq!(
        verify(&b[..], ReadOptions::default()).unwrap_err().kind(),
        ErrorKind::Unsupported
    );

    let at = recs[0].offset as usize;
    let crc_at = recs[1].offset as usize - 4;
    for (field, value, what) in [
        (4usize, 9u32, "codec"),
        (8, u32::MAX, "stored length"),
        (12, 0x7fff_ffff, "raw length"),
    ] {
        let mut b = log.clone();
        if field == 4 {
            b[at + 4] = value as u8;
        } else {
            b[at + field..at + field + 4].copy_from_slice(&value.to_le_bytes());
        }
        fix_record_crc(&mut b, at, crc_at, 7);
        let e = verify(&b[..], ReadOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}");
        assert_eq!(
            e.context().offset.map(|o| o >= at as u64),
            Some(true),
            "{what}: {e}"
        );
    }
}

#[test]
fn mapped_reader_refuses_incomplete_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_log(3);
    let p = dir.path().join("a.log");
    std::fs::write(&p, &log[..log.len() - 1]).unwrap();
    let e = MappedLog::open(&p, &ReadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!(e.context().path.as_deref(), Some(p.as_path()));
    let mut bad = log.clone();
    let n = bad.len();
    bad[n / 2] ^= 4;
    std::fs::write(&p, &bad).unwrap();
    assert!(MappedLog::open(&p, &ReadOptions::default()).is_err());
    std::fs::write(&p, &log).unwrap();
    assert_eq!(
        MappedLog::open(&p, &ReadOptions::default())
            .unwrap()
            .trailer()
            .records,
        5
    );
}

#[test]
fn a_copy_of_a_block_not_carried_earlier_is_refused() {
    let mut h = LogHeader::new(DiskId([5; 16]), geo(), LogKind::Delta, 3, 12).unwrap();
    h.salt = 77;
    let opts = WriterOptions {
        record_bytes: 1 << 20,
        threads: 1,
    };
    let mut w = LogWriter::new(Vec::new(), h, opts).unwrap();
    let mut rnd = vec![0u8; 4096];
    common::Rng(9).fill(&mut rnd);
    w.add_block(0, &rnd).unwrap();
    w.add_block(5, &rnd).unwrap();
    let log = w.finish().unwrap().0;
    let (recs, _) = records(&log, false).unwrap();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].extents[1].copy, "block 5 is stored as a copy");
    // One raw record: header, two extents, 4096 data bytes, the source.
    let at = recs[0].offset as usize;
    let payload = at + 24 + 2 * 16;
    let source = payload + 4096;
    let crc_at = source + 8;
    for bad in [1u64, 5, 6, u64::MAX - 1] {
        let mut b = log.clone();
        b[source..source + 8].copy_from_slice(&bad.to_le_bytes());
        let raw_crc = crc32fast::hash(&b[payload..crc_at]);
        b[at + 16..at + 20].copy_from_slice(&raw_crc.to_le_bytes());
        fix_record_crc(&mut b, at, crc_at, 77);
        let e = verify(&b[..], ReadOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "source {bad}");
        assert!(e.to_string().contains("copy"), "source {bad}: {e}");
    }
    // A log whose header does not allow copies may not hold one.
    let mut b = log.clone();
    b[12] = 0;
    fix_header_crc(&mut b);
    assert_eq!(
        verify(&b[..], ReadOptions::default()).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

/// A log opened from a caller's path is read, not mapped: truncating the
/// file afterwards (another process, a full disk being cleaned up) cannot
/// kill the reader with SIGBUS; every block still reads as verified.
#[test]
fn a_log_file_truncated_after_open_is_still_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_log(5);
    let p = dir.path().join("a.log");
    std::fs::write(&p, &log).unwrap();
    let m = MappedLog::open(&p, &ReadOptions::default()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    for b in 0..64 {
        m.read_block(b, &mut buf).unwrap();
    }
    assert_eq!(m.reader().unwrap().count(), 5);
    assert_eq!(m.bytes(), &log[..]);
}
