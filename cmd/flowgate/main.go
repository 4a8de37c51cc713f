// Command flowgate runs the Flowgate API gateway: REST, Connect, gRPC and
// gRPC-Web on one port for the Workflow Agent, Runtime and Engine services,
// with Server-Sent Events for the agent's streams. Without upstream
// addresses it starts the reference backends in process.
//
// Run "flowgate -h" for every flag and the environment variable behind it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/flowgate/flowgate/cmd/internal/flagenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	flagenv.Exit("flowgate", err)
}
