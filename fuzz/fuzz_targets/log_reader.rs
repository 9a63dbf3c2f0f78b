//! Arbitrary bytes through both delta-log readers: never a panic, never an
//! allocation beyond what the format allows (run with -malloc_limit_mb),
//! and every record handed out verifies.
#![no_main]

use blockrep::log::{verify, Block, LogReader, MappedLog, ReadOptions, TailPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for tail in [TailPolicy::Refuse, TailPolicy::StopAtDamage] {
        let opts = ReadOptions { tail, ..Default::default() };
        if let Ok(mut r) = LogReader::new(data, opts) {
            let g = r.header().geometry;
            while let Ok(Some(rec)) = r.next_record() {
                // A record handed out is internally consistent.
                let n: u64 = rec
                    .blocks(g)
                    .map(|(_, d)| if let Block::Data(d) = d { d.len() as u64 } else { 0 })
                    .sum();
                let copies = rec.extents.iter().filter(|e| e.copy).count() as u64;
                assert_eq!(n + 8 * copies, rec.data.len() as u64);
            }
        }
    }
    let strict = verify(data, ReadOptions::default());
    let path = std::env::temp_dir().join(format!("blockrep-fuzz-log-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let mapped = MappedLog::open(&path, &ReadOptions::default());
    assert_eq!(strict.is_ok(), mapped.is_ok(), "the two readers disagree");
    if let Ok(m) = mapped {
        let g = m.header().geometry;
        let mut buf = vec![0u8; g.block_size() as usize];
        for &(first, _) in m.trailer().index.iter().take(64) {
            let len = g.block_len(first) as usize;
            m.read_block(first, &mut buf[..len]).unwrap();
        }
    }
    let _ = std::fs::remove_file(&path);
});
