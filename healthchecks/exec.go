package healthchecks

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
	"unicode"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Exec{})
}

// Exec runs a command for every check, as `COMMAND... HOST PORT`, and reads
// its verdict from standard output, like gobetween's exec check. The output,
// with trailing white space removed, is compared with
// exec_expected_positive_output (healthy) and exec_expected_negative_output
// (unhealthy); any other output leaves the status unchanged (and is logged).
// A non-zero exit status is unhealthy whatever the output.
//
// The command runs in its own process group; at the timeout the whole group
// (the command and everything it started) is killed with SIGKILL and the check
// fails. The command is run directly, not through a shell; use
// ["sh", "-c", "script \"$0\" \"$1\""]-style argv for shell features.
type Exec struct {
	Common
	// The command and its leading arguments; HOST and PORT are appended.
	// Required.
	Command []string `json:"exec_command,omitempty"`
	// Output meaning healthy. Default "1".
	ExpectedPositiveOutput string `json:"exec_expected_positive_output,omitempty"`
	// Output meaning unhealthy. Default "0".
	ExpectedNegativeOutput string `json:"exec_expected_negative_output,omitempty"`

	positive, negative string
}

// maxExecOutput bounds how much of the command's stdout and stderr is kept.
const maxExecOutput = 64 << 10

// execWaitDelay bounds the wait for the output pipes after the command ended
// or was killed (a daemonised grandchild may keep them open).
const execWaitDelay = time.Second

// CaddyModule returns the Caddy module information.
func (Exec) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.healthchecks.exec",
		New: func() caddy.Module { return new(Exec) },
	}
}

// Provision applies the defaults.
func (e *Exec) Provision(caddy.Context) error {
	e.positive = e.ExpectedPositiveOutput
	if e.positive == "" {
		e.positive = "1"
	}
	e.negative = e.ExpectedNegativeOutput
	if e.negative == "" {
		e.negative = "0"
	}
	return nil
}

// Validate checks the settings.
func (e *Exec) Validate() error {
	if len(e.Command) == 0 || e.Command[0] == "" {
		return fmt.Errorf("exec_command: required (the program and its arguments)")
	}
	pos, neg := trimOutput(e.ExpectedPositiveOutput), trimOutput(e.ExpectedNegativeOutput)
	if pos != e.ExpectedPositiveOutput {
		return fmt.Errorf("exec_expected_positive_output %q: must not end with white space (the output is trimmed)", e.ExpectedPositiveOutput)
	}
	if neg != e.ExpectedNegativeOutput {
		return fmt.Errorf("exec_expected_negative_output %q: must not end with white space (the output is trimmed)", e.ExpectedNegativeOutput)
	}
	if pos == "" {
		pos = "1"
	}
	if neg == "" {
		neg = "0"
	}
	if pos == neg {
		return fmt.Errorf("exec_expected_negative_output %q: must differ from exec_expected_positive_output", neg)
	}
	return e.ValidateCommon()
}

// Check runs the command once.
func (e *Exec) Check(ctx context.Context, b *backend.Backend) error {
	args := append(append([]string(nil), e.Command[1:]...), b.Host, b.Port)
	cmd := exec.CommandContext(ctx, e.Command[0], args...)
	setProcessGroup(cmd)
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxExecOutput, 512
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = execWaitDelay
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("exec %s: killed: %w", e.Command[0], context.Cause(ctx))
	}
	if err != nil {
		if msg := trimOutput(stderr.String()); msg != "" {
			return fmt.Errorf("exec %s: %w: %s", e.Command[0], err, msg)
		}
		return fmt.Errorf("exec %s: %w", e.Command[0], err)
	}
	switch out := trimOutput(stdout.String()); out {
	case e.positive:
		return nil
	case e.negative:
		return fmt.Errorf("exec %s: output %q (unhealthy)", e.Command[0], out)
	default:
		return fmt.Errorf("exec %s: output %q is neither %q nor %q: %w", e.Command[0], clipString(out, 64), e.positive, e.negative, ErrNoVerdict)
	}
}

func trimOutput(s string) string { return strings.TrimRightFunc(s, unicode.IsSpace) }

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// limitedBuffer keeps the first max bytes written and discards the rest, so a
// chatty command cannot make the check block or grow memory.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

// Write keeps what fits in the limit and drops the rest, never failing.
func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.Len(); room > 0 {
		l.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// UnmarshalCaddyfile reads
//
//	healthcheck exec {
//		interval 5s
//		command /usr/local/bin/check --quiet
//		expected_positive_output ok
//		expected_negative_output fail
//		... common subdirectives (timeout, fails, passes, initial_status, port)
//	}
//
// The exec_ prefix is dropped; the full JSON names are accepted too.
func (e *Exec) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return e.unmarshalBlock(d, func(name string) (bool, error) {
		switch name {
		case "command", "exec_command":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return true, d.ArgErr()
			}
			e.Command = args
			return true, nil
		case "expected_positive_output", "exec_expected_positive_output":
			return true, stringArg(d, &e.ExpectedPositiveOutput)
		case "expected_negative_output", "exec_expected_negative_output":
			return true, stringArg(d, &e.ExpectedNegativeOutput)
		}
		return false, nil
	})
}

var (
	_ Configured            = (*Exec)(nil)
	_ caddy.Provisioner     = (*Exec)(nil)
	_ caddy.Validator       = (*Exec)(nil)
	_ caddyfile.Unmarshaler = (*Exec)(nil)
)
