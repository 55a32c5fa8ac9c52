//! Maglev table build time for 10, 100 and 1000 weighted origins at M = 65537.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_agent::maglev::{backend_key, build, Backend};
use lb_common::MAGLEV_M;

fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    for n in [10usize, 100, 1000] {
        let backends: Vec<Backend> = (0..n)
            .map(|i| Backend {
                key: backend_key(&format!(
                    "10.{}.{}.{}:8080",
                    i / 65536,
                    (i / 256) % 256,
                    i % 256
                )),
                weight: 0.25 + (i % 4) as f64 * 0.25,
            })
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &backends, |b, backends| {
            b.iter(|| build(std::hint::black_box(backends), MAGLEV_M));
        });
    }
    g.finish();
}

criterion_group!(benches, maglev);
criterion_main!(benches);
