//! hyper glue shared by the request path: body types, the worker-local executor, local replies.

pub mod body;
pub mod exec;
pub mod headers;
pub mod local_reply;
pub mod path;
pub mod xfcc;
