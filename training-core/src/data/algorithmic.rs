//! The Grokfast paper's algorithmic tasks: `a ∘ b mod p`.
//!
//! Tokens `0..p` are the numbers, `p` is the operator and `p + 1` the equals sign, so the
//! vocabulary has `p + 2` tokens. Every example is the sequence `[a, ∘, b, =]` and its label is
//! the answer token; the model is scored on the last position only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The binary operation of an algorithmic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// `a + b mod p`.
    Add,
    /// `a − b mod p`.
    Sub,
    /// `a · b mod p`.
    Mul,
    /// `a · b⁻¹ mod p` for `b ≠ 0` (p must be prime).
    Div,
    /// `a² + ab + b² mod p`.
    Poly,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 5] = [
        Operation::Add,
        Operation::Sub,
        Operation::Mul,
        Operation::Div,
        Operation::Poly,
    ];

    /// The name used in dataset specs (`mod-poly:97`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Sub => "sub",
            Operation::Mul => "mul",
            Operation::Div => "div",
            Operation::Poly => "poly",
        }
    }

    fn apply(self, a: u64, b: u64, p: u64) -> Option<u64> {
        Some(match self {
            Operation::Add => (a + b) % p,
            Operation::Sub => (a + p - b) % p,
            Operation::Mul => (a * b) % p,
            Operation::Div => {
                if b == 0 {
                    return None;
                }
                // Fermat: b⁻¹ = b^(p−2) for prime p.
                (a * pow_mod(b, p - 2, p)) % p
            }
            Operation::Poly => (a * a + a * b + b * b) % p,
        })
    }
}

/// One algorithmic task, written `mod-OP:P` (`mod-mul:97`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModularTask {
    /// The operation.
    pub operation: Operation,
    /// The modulus.
    pub modulus: u32,
}

/// The largest modulus accepted: p² examples must fit in memory comfortably.
const MAX_MODULUS: u32 = 4096;

impl ModularTask {
    /// Number of token ids: the `p` numbers, the operator and `=`.
    pub fn vocab_size(&self) -> usize {
        self.modulus as usize + 2
    }

    /// Every equation of the task, in `(a, b)` order, as `([a, op, b, eq], answer)`.
    pub fn equations(&self) -> Vec<([u32; 4], u32)> {
        let p = u64::from(self.modulus);
        let op_token = self.modulus;
        let eq_token = self.modulus + 1;
        let mut out = Vec::with_capacity((p * p) as usize);
        for a in 0..p {
            for b in 0..p {
                if let Some(c) = self.operation.apply(a, b, p) {
                    out.push(([a as u32, op_token, b as u32, eq_token], c as u32));
                }
            }
        }
        out
    }
}

impl fmt::Display for ModularTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mod-{}:{}", self.operation.as_str(), self.modulus)
    }
}

impl FromStr for ModularTask {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let refuse = |reason: String| Error::DatasetSpec {
            spec: spec.to_string(),
            reason,
        };
        let rest = spec
            .strip_prefix("mod-")
            .ok_or_else(|| refuse("expected mod-OP:P, e.g. mod-mul:97".to_string()))?;
        let (op, modulus) = rest
            .split_once(':')
            .ok_or_else(|| refuse("expected mod-OP:P, e.g. mod-mul:97".to_string()))?;
        let operation = Operation::ALL
            .into_iter()
            .find(|o| o.as_str() == op)
            .ok_or_else(|| {
                refuse(format!(
                    "unknown operation {op:?}; expected add, sub, mul, div or poly"
                ))
            })?;
        let modulus: u32 = modulus
            .parse()
            .map_err(|_| refuse(format!("modulus {modulus:?} is not a positive integer")))?;
        if !(2..=MAX_MODULUS).contains(&modulus) {
            return Err(refuse(format!("modulus must be in 2..={MAX_MODULUS}")));
        }
        if operation == Operation::Div && !is_prime(modulus) {
            return Err(refuse(format!(
                "division needs a prime modulus so every b ≠ 0 has an inverse; {modulus} is not prime"
            )));
        }
        Ok(Self { operation, modulus })
    }
}

fn pow_mod(mut base: u64, mut exp: u64, p: u64) -> u64 {
    let mut acc = 1 % p;
    base %= p;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc * base % p;
        }
        base = base * base % p;
        exp >>= 1;
    }
    acc
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for op in Operation::ALL {
            let spec = format!("mod-{}:97", op.as_str());
            let task: ModularTask = spec.parse().unwrap();
            assert_eq!(task.operation, op);
            assert_eq!(task.to_string(), spec);
        }
        for bad in [
            "mul:97",
            "mod-mul",
            "mod-pow:97",
            "mod-mul:1",
            "mod-mul:x",
            "mod-div:96",
        ] {
            assert!(
                matches!(bad.parse::<ModularTask>(), Err(Error::DatasetSpec { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn equations_are_correct() {
        let p = 7u32;
        let check = |op: &str, f: &dyn Fn(u32, u32) -> Option<u32>| {
            let task: ModularTask = format!("mod-{op}:{p}").parse().unwrap();
            let eqs = task.equations();
            for ([a, o, b, e], c) in &eqs {
                assert_eq!((*o, *e), (p, p + 1));
                assert_eq!(Some(*c), f(*a, *b), "{op} {a} {b}");
            }
            eqs.len()
        };
        assert_eq!(check("add", &|a, b| Some((a + b) % p)), 49);
        assert_eq!(check("sub", &|a, b| Some((a + p - b) % p)), 49);
        assert_eq!(check("mul", &|a, b| Some(a * b % p)), 49);
        assert_eq!(check("poly", &|a, b| Some((a * a + a * b + b * b) % p)), 49);
        // c = a / b  ⇔  c · b = a.
        assert_eq!(
            check("div", &|a, b| (0..p).find(|c| b != 0 && c * b % p == a)),
            42
        );
    }
}
