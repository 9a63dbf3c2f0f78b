//! Writes a valid log from the fuzz input, mutates it as the input says,
//! and checks that every record the reader returns is one that was written.
#![no_main]

use blockrep::log::{LogHeader, LogKind, LogReader, LogWriter, ReadOptions, Record, TailPolicy, WriterOptions};
use blockrep::{DiskId, Extent, Geometry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let g = Geometry::new(64 * 4096 + 100, 4096).unwrap();
    let mut h = LogHeader::new(DiskId([9; 16]), g, LogKind::Delta, 1, 2).unwrap();
    h.salt = 77;
    let record_bytes = 4096 << (ctl[0] % 5);
    let mut w = LogWriter::new(Vec::new(), h, WriterOptions { record_bytes, threads: 1 }).unwrap();
    // Input bytes pick blocks (ascending) and their fill pattern.
    let mut block = 0u64;
    for pair in rest.chunks(2).take(64) {
        block += 1 + (pair[0] % 4) as u64;
        if block >= g.block_count() {
            break;
        }
        let fill = pair.get(1).copied().unwrap_or(0);
        if fill % 7 == 0 {
            w.add_zero(Extent::new(block, 1)).unwrap();
        } else {
            let len = g.block_len(block) as usize;
            let d: Vec<u8> = (0..len).map(|i| fill.wrapping_mul(i as u8 | 1) ^ (i >> 8) as u8).collect();
            w.add_block(block, &d).unwrap();
        }
    }
    let (mut log, _) = w.finish().unwrap();
    let written: Vec<Record> = LogReader::new(&log[..], ReadOptions::default()).unwrap().map(|r| r.unwrap()).collect();
    // Mutations: (position, xor) pairs from the control bytes.
    let n = log.len();
    let pos = u16::from_le_bytes([ctl[1], ctl[2]]) as usize % n;
    log[pos] ^= ctl[3] | 1;
    if let Ok(mut r) = LogReader::new(&log[..], ReadOptions { tail: TailPolicy::StopAtDamage, ..Default::default() }) {
        let mut i = 0;
        while let Ok(Some(rec)) = r.next_record() {
            assert_eq!(rec, written[i], "record {i} differs from the one written");
            i += 1;
        }
    }
});
