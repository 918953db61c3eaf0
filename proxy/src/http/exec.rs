//! hyper's executor for worker threads: tasks stay on the worker that spawned them
//! (`spawn_local`), so connection state never crosses threads and needs no `Send`.

use std::future::Future;

#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
