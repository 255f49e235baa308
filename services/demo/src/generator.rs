//! The seeded transaction generator.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const COUNTRIES: &[&str] = &["FR", "DE", "ES", "IT", "NL", "BE", "PT", "IE", "PL", "SE"];
const FAR_COUNTRIES: &[&str] = &["BR", "NG", "VN", "RU", "ID", "PH", "UA", "MX"];
/// Merchants `m-00000` .. below this index are high-risk (gift cards, electronics resellers).
const RISKY_MERCHANTS: u32 = 20;

/// Shape of the synthetic population.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Distinct users.
    pub users: u32,
    /// Distinct merchants.
    pub merchants: u32,
    /// Probability that a transaction starts a fraud burst on its user's card.
    pub fraud_rate: f64,
    /// After this many transactions the world changes (for watching monitoring work): legitimate
    /// amounts grow 2.5×, card holders pay abroad half of the time, and fraud takes a new shape
    /// (at home, at the holder's usual merchants, for 1–2× the usual amount) that a model trained
    /// before does not recognise. `None`: never.
    pub shift_after: Option<u64>,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            users: 5_000,
            merchants: 800,
            fraud_rate: 0.004,
            shift_after: None,
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    home: &'static str,
    /// Median spend.
    typical: f64,
    favourites: [u32; 4],
}

/// One generated transaction and its hidden truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Unique id.
    pub txn_id: String,
    /// Card holder.
    pub user_id: String,
    /// Merchant.
    pub merchant_id: String,
    /// Amount in EUR.
    pub amount: f64,
    /// Country of the merchant terminal.
    pub country: String,
    /// Event time.
    pub event_time: DateTime<Utc>,
    /// Whether it is fraud (revealed later by the label).
    pub is_fraud: bool,
}

impl Transaction {
    /// The `transactions` event.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "txn_id": self.txn_id,
            "user_id": self.user_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "country": self.country,
            "event_time": rfc3339(self.event_time),
        })
        .to_string()
    }

    /// The `labels` event, observed at `at`.
    pub fn label_json(&self, at: DateTime<Utc>) -> String {
        serde_json::json!({
            "txn_id": self.txn_id,
            "user_id": self.user_id,
            "is_fraud": self.is_fraud,
            "event_time": rfc3339(at),
        })
        .to_string()
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T10:00:00.250Z`.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Seeded generator of transactions with a hidden fraud pattern: a compromised card sees a
/// short burst of large payments at high-risk merchants, usually abroad.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    seed: u64,
    users: Vec<User>,
    options: GeneratorOptions,
    /// Users with an ongoing fraud burst → transactions left in it.
    bursts: HashMap<u32, u32>,
    sequence: u64,
}

impl Generator {
    /// A generator for `seed`.
    pub fn new(seed: u64, options: GeneratorOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let merchants = options.merchants.max(RISKY_MERCHANTS + 4);
        let users = (0..options.users.max(1))
            .map(|_| User {
                home: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
                typical: (rng.random_range(2.5f64..4.5)).exp(),
                favourites: std::array::from_fn(|_| rng.random_range(RISKY_MERCHANTS..merchants)),
            })
            .collect();
        Self {
            rng,
            seed,
            users,
            options: GeneratorOptions {
                merchants,
                ..options
            },
            bursts: HashMap::new(),
            sequence: 0,
        }
    }

    /// Generates and drops `n` transactions: the sequence then goes on where a run of the same
    /// seed that sent `n` stopped.
    pub fn skip(&mut self, n: u64) {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        for _ in 0..n {
            self.next_transaction(now);
        }
    }

    /// The next transaction, stamped `now`.
    pub fn next_transaction(&mut self, now: DateTime<Utc>) -> Transaction {
        self.sequence += 1;
        // Bursts are fast: half the time, the next event continues one.
        let burst_user = if !self.bursts.is_empty() && self.rng.random_bool(0.5) {
            let mut keys: Vec<u32> = self.bursts.keys().copied().collect();
            keys.sort_unstable();
            Some(keys[self.rng.random_range(0..keys.len())])
        } else {
            None
        };
        let user_index = burst_user.unwrap_or_else(|| {
            // Skewed activity: some users are much busier than most (the busiest two make about
            // 0.5 % of the traffic of 5 000 users).
            let u: f64 = self.rng.random();
            (u.powf(1.5) * self.users.len() as f64) as u32 % self.users.len() as u32
        });
        let fraud = match self.bursts.get_mut(&user_index) {
            Some(left) => {
                *left -= 1;
                if *left == 0 {
                    self.bursts.remove(&user_index);
                }
                true
            }
            None if self.rng.random_bool(self.options.fraud_rate) => {
                let length = self.rng.random_range(2..=6);
                self.bursts.insert(user_index, length - 1);
                true
            }
            None => false,
        };
        let user = &self.users[user_index as usize];
        let noise: f64 = self.rng.random_range(-0.6f64..0.6);
        let shifted = self.options.shift_after.is_some_and(|n| self.sequence > n);
        let (merchant, country, amount) = if fraud && shifted {
            (
                user.favourites[self.rng.random_range(0..4)],
                user.home,
                user.typical * self.rng.random_range(1.0..2.0) * noise.exp(),
            )
        } else if fraud {
            let country = if self.rng.random_bool(0.8) {
                FAR_COUNTRIES[self.rng.random_range(0..FAR_COUNTRIES.len())]
            } else {
                user.home
            };
            (
                self.rng.random_range(0..RISKY_MERCHANTS),
                country,
                user.typical * self.rng.random_range(3.0..12.0) * noise.exp(),
            )
        } else {
            let merchant = if self.rng.random_bool(0.7) {
                user.favourites[self.rng.random_range(0..4)]
            } else if self.rng.random_bool(0.02) {
                self.rng.random_range(0..RISKY_MERCHANTS)
            } else {
                self.rng
                    .random_range(RISKY_MERCHANTS..self.options.merchants)
            };
            let (abroad, scale) = if shifted { (0.5, 2.5) } else { (0.03, 1.0) };
            let country = if self.rng.random_bool(abroad) {
                COUNTRIES[self.rng.random_range(0..COUNTRIES.len())]
            } else {
                user.home
            };
            (merchant, country, user.typical * noise.exp() * scale)
        };
        Transaction {
            txn_id: format!("txn-{:x}-{:08}", self.seed, self.sequence),
            user_id: format!("u-{user_index:06}"),
            merchant_id: format!("m-{merchant:05}"),
            amount: (amount * 100.0).round() / 100.0,
            country: country.to_string(),
            event_time: now,
            is_fraud: fraud,
        }
    }

    /// A malformed `transactions` event of a rotating kind (for exercising the dead-letter path).
    pub fn malformed(&mut self, now: DateTime<Utc>) -> String {
        let t = self.next_transaction(now);
        let mut event = serde_json::json!({
            "txn_id": t.txn_id,
            "user_id": t.user_id,
            "merchant_id": t.merchant_id,
            "amount": t.amount,
            "country": t.country,
            "event_time": rfc3339(now),
        });
        match self.sequence % 4 {
            0 => return format!("{{\"txn_id\": \"{}\", truncated", t.txn_id),
            1 => {
                if let Some(map) = event.as_object_mut() {
                    map.remove("user_id");
                }
            }
            2 => event["amount"] = serde_json::Value::from("n/a"),
            _ => event["event_time"] = serde_json::Value::from("yesterday"),
        }
        event.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, n: usize) -> Vec<Transaction> {
        let mut g = Generator::new(seed, GeneratorOptions::default());
        let t = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
        (0..n).map(|_| g.next_transaction(t)).collect()
    }

    #[test]
    fn same_seed_same_stream() {
        assert_eq!(run(7, 500), run(7, 500));
        assert_ne!(run(7, 50), run(8, 50));
    }

    #[test]
    fn fraud_is_rare_and_looks_different() {
        let txns = run(1, 50_000);
        let fraud: Vec<_> = txns.iter().filter(|t| t.is_fraud).collect();
        let rate = fraud.len() as f64 / txns.len() as f64;
        assert!((0.005..0.05).contains(&rate), "fraud rate {rate}");
        let risky = |t: &&Transaction| t.merchant_id.as_str() < "m-00020";
        assert!(fraud.iter().all(risky));
        let mean = |v: &[&Transaction]| v.iter().map(|t| t.amount).sum::<f64>() / v.len() as f64;
        let legit: Vec<_> = txns.iter().filter(|t| !t.is_fraud).collect();
        assert!(mean(&fraud) > 3.0 * mean(&legit));
    }

    #[test]
    fn a_shift_changes_amounts_countries_and_fraud_only_after_it() {
        let options = GeneratorOptions {
            shift_after: Some(20_000),
            ..GeneratorOptions::default()
        };
        let t = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
        let mut g = Generator::new(1, options);
        let shifted: Vec<Transaction> = (0..40_000).map(|_| g.next_transaction(t)).collect();
        let plain = run(1, 20_000);
        assert_eq!(
            shifted[..20_000],
            plain[..],
            "the same stream before the shift"
        );
        let (before, after) = shifted.split_at(20_000);
        let legit_mean = |v: &[Transaction]| {
            let legit: Vec<f64> = v.iter().filter(|t| !t.is_fraud).map(|t| t.amount).collect();
            legit.iter().sum::<f64>() / legit.len() as f64
        };
        let ratio = legit_mean(after) / legit_mean(before);
        assert!((2.2..2.8).contains(&ratio), "amounts ×{ratio}");
        // Fraud is now at usual merchants, never far away.
        let fraud_after: Vec<&Transaction> = after.iter().filter(|t| t.is_fraud).collect();
        assert!(!fraud_after.is_empty());
        assert!(
            fraud_after
                .iter()
                .all(|t| t.merchant_id.as_str() >= "m-00020")
        );
        assert!(
            fraud_after
                .iter()
                .all(|t| !FAR_COUNTRIES.contains(&t.country.as_str()))
        );
    }

    #[test]
    fn events_match_the_demo_schema() {
        let t = &run(3, 1)[0];
        let v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 6);
        assert_eq!(v["event_time"], "2026-11-26T10:00:00.000Z");
        let l: serde_json::Value = serde_json::from_str(&t.label_json(t.event_time)).unwrap();
        assert_eq!(l["is_fraud"], t.is_fraud);
    }

    #[test]
    fn a_skipped_sequence_goes_on_where_the_earlier_run_stopped() {
        let now = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
        let mut first = Generator::new(9, GeneratorOptions::default());
        let sent: Vec<Transaction> = (0..600).map(|_| first.next_transaction(now)).collect();
        let mut next = Generator::new(9, GeneratorOptions::default());
        next.skip(500);
        for t in &sent[500..] {
            let again = next.next_transaction(now);
            assert_eq!(
                (&again.txn_id, &again.user_id, again.amount),
                (&t.txn_id, &t.user_id, t.amount)
            );
        }
    }

    #[test]
    fn malformed_events_are_not_valid_transactions() {
        let mut g = Generator::new(1, GeneratorOptions::default());
        let now = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
        for _ in 0..8 {
            let bad = g.malformed(now);
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(&bad);
            let ok = parsed.is_ok_and(|v| {
                v["user_id"].is_string()
                    && v["amount"].is_number()
                    && v["event_time"] != "yesterday"
            });
            assert!(!ok, "{bad}");
        }
    }
}
