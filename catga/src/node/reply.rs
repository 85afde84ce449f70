//! [`Reply`], the future that [`Node::send`] and [`Node::query`] return.
//!
//! A local read (the default for a query) is answered on the future's first
//! poll from this node's state, with no allocation and no task hop; anything
//! that waits (a write, a read index, another node, a state-less handler)
//! is one boxed future. A named type rather than an `async fn`: a message
//! that cannot be sent is one compile error at the call, not one per use of
//! the future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Node;
use crate::error::Result;
use crate::message::{BoxFuture, Handled};

/// The answer of [`Node::send`] or [`Node::query`] for message `M`, whose
/// handler returns `O`: await it.
///
/// Like every future it does nothing until it is polled: a local query
/// reads the state when awaited, not when `send` is called. (No bounds on
/// the type itself, so a message that cannot be sent is reported once, at
/// the call.)
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Reply<'a, M, O> {
    state: State<'a, M, O>,
}

enum State<'a, M, O> {
    /// A read of this node's state, answered on the first poll.
    Local {
        node: &'a Node,
        msg: Option<M>,
        read: fn(&Node, M) -> Result<O>,
    },
    /// Everything else.
    Boxed(BoxFuture<'a, Result<O>>),
}

impl<'a, M: Handled> Reply<'a, M, M::Output> {
    pub(super) fn local(node: &'a Node, msg: M) -> Self {
        Reply {
            state: State::Local {
                node,
                msg: Some(msg),
                read: Node::read_local::<M>,
            },
        }
    }

    pub(super) fn boxed(fut: BoxFuture<'a, Result<M::Output>>) -> Self {
        Reply {
            state: State::Boxed(fut),
        }
    }
}

// `msg` is moved out on the first poll and never pinned; the boxed future
// is pinned on the heap.
impl<M, O> Unpin for Reply<'_, M, O> {}

impl<M, O> Future for Reply<'_, M, O> {
    type Output = Result<O>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Local { node, msg, read } => match msg.take() {
                Some(msg) => Poll::Ready(read(node, msg)),
                None => panic!("a catga `Reply` was polled after it completed"),
            },
            State::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<M, O> std::fmt::Debug for Reply<'_, M, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.state {
            State::Local { .. } => "local read",
            State::Boxed(_) => "boxed",
        };
        f.debug_struct("Reply")
            .field("message", &std::any::type_name::<M>())
            .field("kind", &kind)
            .finish()
    }
}
