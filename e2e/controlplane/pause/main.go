// Command pause is the process of a pod's sandbox container: it holds the
// pod's namespaces and does nothing else, like Kubernetes' own pause (which
// is C and cannot be pulled here). SIGCHLD is ignored so the kernel reaps
// orphans re-parented to it; SIGINT and SIGTERM end it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (ferry e2e)\n")
		return
	}
	signal.Ignore(syscall.SIGCHLD)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
