//! Who coordinates a request, and whether it can be tried at all.

use qkv_proto::{Error, Level, NodeId};

/// Where a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRoute {
    /// This node is a home replica: it coordinates.
    Local,
    /// Forward to this home replica.
    Forward(NodeId),
}

/// Writes are coordinated by a home replica of the key, the first one that is up.
///
/// A write that was already forwarded once is never forwarded again.
pub fn route_write(
    preference: &[NodeId],
    me: NodeId,
    forwarded: bool,
    is_up: impl Fn(NodeId) -> bool,
) -> Result<WriteRoute, Error> {
    if preference.contains(&me) {
        return Ok(WriteRoute::Local);
    }
    if forwarded {
        return Err(Error::BadRequest(format!(
            "a forwarded write reached node {me}, which is not a replica of the key: do the nodes' peer lists differ?"
        )));
    }
    preference.iter().copied().find(|&n| is_up(n)).map(WriteRoute::Forward).ok_or(Error::Unreachable(format!(
        "no home replica of the key is up to coordinate the write (all {} are down); stand-ins hold \
             copies for home replicas that are down, but one home replica must coordinate",
        preference.len()
    )))
}

/// Replies needed for `level`, refusing before anything is sent when fewer replicas are up.
pub fn check_available(level: Level, n: usize, alive: usize) -> Result<usize, Error> {
    let needed = level.required(n)?;
    if alive < needed {
        return Err(Error::Unavailable { level: level.to_string(), needed: needed as u32, alive: alive as u32 });
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        let up = |n: NodeId| n != 2;
        assert_eq!(route_write(&[1, 2, 3], 1, false, up), Ok(WriteRoute::Local));
        assert_eq!(route_write(&[2, 3, 4], 1, false, up), Ok(WriteRoute::Forward(3)));
        assert_eq!(route_write(&[3, 2, 4], 1, false, up), Ok(WriteRoute::Forward(3)));
        assert!(route_write(&[2, 3, 4], 1, true, up).is_err());
        assert!(route_write(&[2], 1, false, up).is_err());
    }

    #[test]
    fn availability_table() {
        assert_eq!(check_available(Level::Quorum, 3, 2), Ok(2));
        assert_eq!(
            check_available(Level::All, 3, 2),
            Err(Error::Unavailable { level: "all".into(), needed: 3, alive: 2 })
        );
        assert!(matches!(check_available(Level::Exactly(4), 3, 3), Err(Error::InvalidLevel { .. })));
    }
}
