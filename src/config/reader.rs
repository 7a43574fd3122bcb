//! Reading variables one by one, collecting every problem on the way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{RateQuota, TrustProxy};

/// Collects values and problems while reading variables one by one.
pub(super) struct Reader<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<String>,
}

impl Reader<'_> {
    pub(super) fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&mut self, key: &str) -> Option<String> {
        let value = self.raw(key);
        if value.is_none() {
            self.problems.push(format!("{key} is required but not set"));
        }
        value
    }

    pub(super) fn parsed<T: FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                self.problems.push(format!("{key}=`{v}` is invalid: {e}"));
                default
            }),
        }
    }

    pub(super) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.problems
                    .push(format!("{key}=`{v}` is invalid: expected true or false"));
                default
            }
        }
    }

    /// A number that must lie in `range` (a shift of 0 hours, or a timeout of 0 seconds, would
    /// start a service that refuses everything).
    pub(super) fn ranged<T>(
        &mut self,
        key: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parsed(key, default);
        if range.contains(&value) {
            value
        } else {
            self.problems.push(format!(
                "{key}=`{value}` is out of range: {} to {}",
                range.start(),
                range.end()
            ));
            default
        }
    }

    pub(super) fn choice<T: Copy>(&mut self, key: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(v) = self.raw(key) else {
            return default;
        };
        match options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&v))
        {
            Some((_, value)) => *value,
            None => {
                let names: Vec<_> = options.iter().map(|(n, _)| *n).collect();
                self.problems.push(format!(
                    "{key}=`{v}` is invalid: expected one of {}",
                    names.join(", ")
                ));
                default
            }
        }
    }
}

impl FromStr for RateQuota {
    type Err = String;

    /// `100/15m`, `5/900s`, `20/5m`, `1000/1h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, period) = s
            .split_once('/')
            .ok_or_else(|| "expected REQUESTS/PERIOD such as 100/15m".to_string())?;
        let burst: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a request count"))?;
        let period = parse_duration(period.trim())?;
        if burst == 0 || period.is_zero() {
            return Err("requests and period must both be above zero".into());
        }
        // The limiter counts in nanoseconds, in 64 bits.
        if u64::try_from(period.as_nanos()).is_err() {
            return Err(format!(
                "`{}` is longer than the rate limiter can count (some 584 years)",
                s.trim()
            ));
        }
        Ok(Self { burst, period })
    }
}

impl FromStr for TrustProxy {
    type Err = String;

    /// `false`, `true`, or addresses and networks: `10.0.0.5`, `10.0.0.0/8, fd00::/8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "false" | "0" | "no" | "off" => return Ok(Self::Nobody),
            "true" | "1" | "yes" | "on" => return Ok(Self::Anyone),
            _ => {}
        }
        let peers = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "`{p}` is not an address or network; expected true, false, or the \
                             proxies' addresses such as 10.0.0.5, 10.0.0.0/8"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if peers.is_empty() {
            return Err("expected true, false, or the proxies' addresses".into());
        }
        Ok(Self::Peers(peers))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90s, 15m or 1h"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}` has an unknown unit (use s, m or h)")),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is longer than any period this service can count"))
}
