//! Times `train` natively on a u.data-format file: `cargo run --release -p collaborative
//! --example train_time -- ../shared/datasets/ml-100k/u.data [config-json]`.

use collaborative::Collaborative;
use recohost_plugin_sdk::{EventKind, Feedback, Item, Strategy};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: train_time FILE [CONFIG_JSON]");
    let config = args.next().unwrap_or_else(|| "{}".into());
    let text = std::fs::read_to_string(&path).expect("readable ratings file");
    let mut users = std::collections::HashMap::new();
    let mut items = std::collections::HashMap::new();
    let mut events = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let next_user = users.len() as u32;
        let user = *users.entry(f[0].to_string()).or_insert(next_user);
        let next_item = items.len() as u32;
        let item = *items.entry(f[1].to_string()).or_insert(next_item);
        let value: f32 = f[2].parse().unwrap_or(0.0);
        let timestamp: u64 = f[3].parse().unwrap_or(0);
        events.push(Feedback {
            user,
            item,
            kind: EventKind::Rate,
            value,
            timestamp,
        });
    }
    let catalog: Vec<Item> = (0..items.len() as u32)
        .map(|index| Item {
            index,
            title: String::new(),
            tags: vec![],
        })
        .collect();
    let mut model = Collaborative::configure(&config, catalog).expect("config");
    let started = std::time::Instant::now();
    let report = model.train(events).expect("train");
    println!(
        "trained on {} events in {:.3} s: {}",
        report.events_used,
        started.elapsed().as_secs_f64(),
        report.message
    );
}
