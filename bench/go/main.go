// relabel-go: go-selinux's recursive Chcon, the relabel every container runtime runs, as a benchmark
// baseline. Usage: relabel-go PATH LABEL. Prints the seconds the call took.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/selinux/go-selinux"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: relabel-go PATH LABEL")
		os.Exit(2)
	}
	start := time.Now()
	if err := selinux.Chcon(os.Args[1], os.Args[2], true); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%.6f\n", time.Since(start).Seconds())
}
