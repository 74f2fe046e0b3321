fn main() {
    let seed: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut cfg = constructr_core::sim::SimConfig::default();
    if std::env::args().nth(2).is_some() {
        cfg.mutations.skip_reread_after_lock = true;
    }
    let o = constructr_core::sim::run_trial(&cfg, seed);
    println!("{:#?}", o);
}
