//! libtorch's global random generator, seeded and drawn from under one lock: a seeded draw (a LoRA
//! dropout mask, a model's random weights, a method's initial tensors) must not interleave with another
//! thread's reseeding, which several models built in one process (tests, a library user) would do.
use std::sync::Mutex;

static GENERATOR: Mutex<()> = Mutex::new(());

/// `draw()` with the global generator seeded with `seed`, no other seeded draw in between.
pub fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    // A panic inside a draw poisons nothing that matters: the generator is reseeded each time.
    let _held = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// `draw()` from each of `seeds` in turn under one hold of the lock.
pub fn seeded_each(seeds: impl IntoIterator<Item = i64>, mut draw: impl FnMut(usize)) {
    let _held = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (i, seed) in seeds.into_iter().enumerate() {
        tch::manual_seed(seed);
        draw(i);
    }
}
