//! The fixed table of the 12 AWS regions this image serves, in SPEC order.
//!
//! A region's port is `port_base + its index here`, whether or not every region is selected,
//! so a region keeps its port when an operator runs a subset. Pure data, used by every thread.

/// Region names in table order; the index is the port offset.
pub const REGIONS: [&str; 12] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-south-1",
    "ca-central-1",
    "sa-east-1",
    "us-gov-west-1",
    "us-gov-east-1",
    "us-west-1",
];

/// The table index of `name`, if it is one of ours.
pub fn index_of(name: &str) -> Option<usize> {
    REGIONS.iter().position(|r| *r == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_spec_ports() {
        assert_eq!(REGIONS.len(), 12);
        assert_eq!(index_of("us-east-1"), Some(0));
        assert_eq!(index_of("ap-south-1"), Some(6));
        assert_eq!(index_of("us-west-1"), Some(11));
        assert_eq!(index_of("mars-north-1"), None);
    }
}
