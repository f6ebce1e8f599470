package discovery

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Exec{})
}

// Exec runs a command and reads the backends from its standard output, one
// gobetween backend line each:
//
//	host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]
//
// Blank lines and lines starting with # are ignored. The fetch fails, and the
// last good list stays (failpolicy keeplast), when the command exits with a
// non-zero status (the error quotes the first line of its standard error),
// prints a line that is not a backend line (the error names the line), cannot
// be started, or is still running at the timeout.
//
// The command runs directly, not through a shell (use ["sh", "-c", "..."]
// for shell features), in a process group of its own: at the timeout (default
// 3s) the whole group, the command and everything it started, is killed with
// SIGKILL.
type Exec struct {
	Common
	// The program and its arguments. Required.
	Command []string `json:"exec_command,omitempty"`
}

// ExecDefaultTimeout is the time limit of one exec fetch when timeout is "0".
const ExecDefaultTimeout = 3 * time.Second

const (
	// maxExecStdout bounds the command's output; more is an error rather
	// than a silently shortened list.
	maxExecStdout = 4 << 20
	// maxExecStderr is how much of the error output is kept for the message.
	maxExecStderr = 4 << 10
	// execWaitDelay bounds the wait for the output pipes after the command
	// ended or was killed (a daemonised grandchild may keep them open).
	execWaitDelay = time.Second
)

// CaddyModule returns the Caddy module information.
func (Exec) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.exec",
		New: func() caddy.Module { return new(Exec) },
	}
}

// Provision sets the kind's default timeout.
func (e *Exec) Provision(caddy.Context) error {
	e.kindTimeout = ExecDefaultTimeout
	return nil
}

// Validate checks the settings.
func (e *Exec) Validate() error {
	if len(e.Command) == 0 || e.Command[0] == "" {
		return fmt.Errorf("exec_command: required (the program and its arguments)")
	}
	return e.ValidateCommon()
}

// Fetch runs the command once and parses its output.
func (e *Exec) Fetch(ctx context.Context) ([]backend.Backend, error) {
	name := e.Command[0]
	cmd := exec.CommandContext(ctx, name, e.Command[1:]...)
	setProcessGroup(cmd)
	stdout := &cappedBuffer{max: maxExecStdout}
	stderr := &cappedBuffer{max: maxExecStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = execWaitDelay
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("exec %s: killed: %w", name, context.Cause(ctx))
	}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		if msg := firstLine(stderr.String()); msg != "" {
			return nil, fmt.Errorf("exec %s: %w: %s", name, err, msg)
		}
		return nil, fmt.Errorf("exec %s: %w", name, err)
	case err != nil: // could not start
		return nil, fmt.Errorf("exec %s: %w", name, err)
	case stdout.over:
		return nil, fmt.Errorf("exec %s: output larger than %d bytes", name, maxExecStdout)
	}
	list, err := parseLines(stdout.String(), backend.Parse, nil)
	if err != nil {
		return nil, fmt.Errorf("exec %s: output %w", name, err)
	}
	return list, nil
}

// firstLine returns the first non-blank line of s, trimmed and clipped.
func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			return clip(line, 200)
		}
	}
	return ""
}

// clip shortens s to n bytes for an error message.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// cappedBuffer keeps the first max bytes written and notes that more came,
// never failing a write (a failed write would stop the copy and leave the
// command blocked on a full pipe).
type cappedBuffer struct {
	strings.Builder
	max  int
	over bool
}

// Write keeps what fits and drops the rest.
func (c *cappedBuffer) Write(p []byte) (int, error) {
	keep := p
	if room := c.max - c.Len(); len(p) > room {
		c.over = true
		keep = p[:max(room, 0)]
	}
	c.Builder.Write(keep)
	return len(p), nil
}

// UnmarshalCaddyfile reads
//
//	discovery exec PROGRAM [ARGS...] {
//		command PROGRAM [ARGS...]
//		interval, timeout, failpolicy
//	}
//
// The program and its arguments come inline or in the block (command or
// exec_command), not both.
func (e *Exec) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	e.Command = d.RemainingArgs()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "command", "exec_command":
			if len(e.Command) > 0 {
				return d.Err("discovery exec: the command is given twice")
			}
			if e.Command = d.RemainingArgs(); len(e.Command) == 0 {
				return d.ArgErr()
			}
		default:
			if err := e.UnmarshalCommon(d); err != nil {
				return err
			}
		}
	}
	if len(e.Command) == 0 {
		return d.Err("discovery exec: missing the command (discovery exec PROGRAM [ARGS...])")
	}
	return nil
}

var (
	_ Configured            = (*Exec)(nil)
	_ caddy.Provisioner     = (*Exec)(nil)
	_ caddy.Validator       = (*Exec)(nil)
	_ caddyfile.Unmarshaler = (*Exec)(nil)
)
