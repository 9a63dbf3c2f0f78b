//! Property tests of the tracker and its block sets against a model set.

use blockrep::{BlockSet, ErrorKind, Extent, Geometry, Tracker};
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Op {
    Mark(u64, u64),
    Cut,
    ReclaimLast,
    Check(u64),
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (12u32..=20, 1u64..=4000, 0u64..4096).prop_map(|(shift, blocks, extra)| {
        let bs = 1u64 << shift;
        let size = (blocks - 1) * bs + 1 + extra % bs;
        Geometry::new(size, bs as u32).unwrap()
    })
}

fn ops(g: Geometry) -> impl Strategy<Value = Vec<Op>> {
    let size = g.size();
    let op = prop_oneof![
        6 => (0..size + 10, 0..size / 3 + 5).prop_map(|(o, l)| Op::Mark(o, l)),
        1 => (0..u64::MAX, 0..u64::MAX).prop_map(|(o, l)| Op::Mark(o, l)),
        2 => Just(Op::Cut),
        1 => Just(Op::ReclaimLast),
        1 => (0..g.block_count() + 2).prop_map(Op::Check),
    ];
    prop::collection::vec(op, 1..60)
}

fn model_extents(m: &BTreeSet<u64>, from: u64) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &b in m.range(from..) {
        match out.last_mut() {
            Some(e) if e.end() == b => e.count += 1,
            _ => out.push(Extent::new(b, 1)),
        }
    }
    out
}

fn as_model(s: &BlockSet) -> BTreeSet<u64> {
    s.blocks().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn tracker_matches_model((g, ops) in geometry().prop_flat_map(|g| (Just(g), ops(g)))) {
        let t = Tracker::new(g);
        let mut model = BTreeSet::new();
        let mut last: Option<BlockSet> = None;
        let mut generation = 1;
        for op in ops {
            match op {
                Op::Mark(o, l) => {
                    let valid = l > 0 && o.checked_add(l).is_some_and(|e| e <= g.size());
                    match t.mark(o, l) {
                        Ok(()) => {
                            prop_assert!(valid);
                            let first = o / u64::from(g.block_size());
                            let last = (o + l - 1) / u64::from(g.block_size());
                            model.extend(first..=last);
                        }
                        Err(e) => {
                            prop_assert!(!valid);
                            let want = if l == 0 { ErrorKind::InvalidArgument } else { ErrorKind::OutOfRange };
                            prop_assert_eq!(e.kind(), want);
                        }
                    }
                }
                Op::Cut => {
                    let f = t.cut();
                    prop_assert_eq!(f.generation(), generation);
                    generation += 1;
                    prop_assert_eq!(as_model(&f), model.clone());
                    prop_assert_eq!(f.count(), model.len() as u64);
                    prop_assert_eq!(f.extents().collect::<Vec<_>>(), model_extents(&model, 0));
                    model.clear();
                    last = Some(f.into_set());
                }
                Op::ReclaimLast => {
                    if let Some(s) = &last {
                        t.reclaim(s);
                        model.extend(s.blocks());
                    }
                }
                Op::Check(b) => {
                    let snap = t.snapshot();
                    prop_assert_eq!(snap.contains(b), model.contains(&b));
                    prop_assert_eq!(snap.extents_from(b).collect::<Vec<_>>(), model_extents(&model, b));
                }
            }
        }
        prop_assert_eq!(as_model(&t.cut()), model);
    }

    #[test]
    fn set_algebra_matches_model(
        universe in 1u64..5000,
        a in prop::collection::vec((0u64..5000, 1u64..200), 0..30),
        b in prop::collection::vec((0u64..5000, 1u64..200), 0..30),
    ) {
        let clip = |v: &Vec<(u64, u64)>| -> Vec<Extent> {
            v.iter().filter(|(s, _)| *s < universe).map(|&(s, c)| Extent::new(s, c.min(universe - s))).collect()
        };
        let (ea, eb) = (clip(&a), clip(&b));
        let sa = BlockSet::from_extents(universe, ea.clone()).unwrap();
        let sb = BlockSet::from_extents(universe, eb.clone()).unwrap();
        let ma: BTreeSet<u64> = ea.iter().flat_map(|e| e.start..e.end()).collect();
        let mb: BTreeSet<u64> = eb.iter().flat_map(|e| e.start..e.end()).collect();
        prop_assert_eq!(as_model(&sa.union(&sb)), &ma | &mb);
        prop_assert_eq!(as_model(&sa.intersection(&sb)), &ma & &mb);
        prop_assert_eq!(as_model(&sa.difference(&sb)), &ma - &mb);
        prop_assert_eq!(sa.count(), ma.len() as u64);
        prop_assert_eq!(sa.extents().collect::<Vec<_>>(), model_extents(&ma, 0));
    }

    #[test]
    fn resize_keeps_bits_below_and_marks_growth(
        old_blocks in 1u64..3000, new_blocks in 1u64..3000, marks in prop::collection::vec(0u64..3000, 0..50)
    ) {
        let bs = 4096u64;
        let mut t = Tracker::new(Geometry::new(old_blocks * bs, bs as u32).unwrap());
        let mut model: BTreeSet<u64> = BTreeSet::new();
        for m in marks.into_iter().filter(|&m| m < old_blocks) {
            t.mark(m * bs, 1).unwrap();
            model.insert(m);
        }
        t.resize(new_blocks * bs).unwrap();
        model.retain(|&b| b < new_blocks);
        model.extend(old_blocks..new_blocks);
        prop_assert_eq!(as_model(&t.cut()), model);
        prop_assert_eq!(t.geometry().block_count(), new_blocks);
    }
}

#[test]
fn bad_ranges_mark_nothing() {
    let g = Geometry::new(1 << 20, 4096).unwrap();
    let t = Tracker::new(g);
    assert_eq!(
        t.mark(u64::MAX - 10, 20).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        t.mark(1 << 20, 1).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        t.mark((1 << 20) - 4096, 4097).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(t.mark(0, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        t.mark_extent(Extent::new(255, 2)).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert!(t.cut().is_empty());
}
