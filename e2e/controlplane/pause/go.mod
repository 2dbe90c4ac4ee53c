module ferry.dev/e2e/pause

go 1.24
