//! Compositions come from users (`remora launch file.xml`): no XML may crash
//! the parser, and every composition it accepts must pass its own validation
//! (placement across nodes included: `nodes=`, `ranks_per_node=` consistent
//! with `np`), keep its ranks contiguous, and survive a JSON round trip.

#![no_main]

use hobbes_proto::composition::Composition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(comp) = Composition::from_xml(text) {
        comp.validate().expect("an accepted composition is valid");
        let mut first = 0;
        for (i, app) in comp.apps.iter().enumerate() {
            assert_eq!(comp.first_rank(i), first);
            first += app.np;
            app.check_placement()
                .expect("an accepted placement is consistent");
            if let (Some(n), Some(r)) = (app.nodes, app.ranks_per_node) {
                assert!(n >= 1 && r >= 1 && n <= app.np);
                assert!(u64::from(n) * u64::from(r) >= u64::from(app.np));
            }
        }
        assert_eq!(comp.total_ranks(), first);
        let json = serde_json::to_string(&comp).expect("a composition serializes");
        let back: Composition = serde_json::from_str(&json).expect("a composition deserializes");
        assert_eq!(back, comp);
    }
});
