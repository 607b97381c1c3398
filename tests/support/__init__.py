"""What the tests share: helpers, in-process fakes of peers, and launchers of real ones."""
