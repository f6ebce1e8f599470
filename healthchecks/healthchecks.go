// Package healthchecks decides which backends are healthy. Each active checker
// is a Caddy module in the namespace between.healthchecks (inline key "kind")
// that implements Checker; one Scheduler per server runs it against every
// discovered backend and also applies passive health (failed dials).
package healthchecks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
)

// Checker checks one backend once. A nil error means healthy. Check should
// honour ctx (the scheduler cancels it at the timeout and stops waiting).
type Checker interface {
	Check(ctx context.Context, b *backend.Backend) error
}

// Common holds the settings every checker shares. Checkers embed it, so the
// fields appear beside the kind's own in JSON.
type Common struct {
	// How often to check each backend. Required.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Time limit of one check. Default: the interval, at most 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Consecutive failures that mark a healthy backend down. Default 1.
	Fails int `json:"fails,omitempty"`
	// Consecutive successes that mark an unhealthy backend up. Default 1.
	Passes int `json:"passes,omitempty"`
	// Status of a newly discovered backend until its first verdict:
	// "healthy" (default) or "unhealthy".
	InitialStatus string `json:"initial_status,omitempty"`
	// Check this port instead of the backend's own.
	Port int `json:"port,omitempty"`
}

// Settings returns the common settings; checkers get it through embedding.
func (c *Common) Settings() *Common { return c }

// ValidateCommon checks the common fields.
func (c *Common) ValidateCommon() error {
	if c.Interval <= 0 {
		return fmt.Errorf("interval: required and must be positive")
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout %s: must not be negative", time.Duration(c.Timeout))
	}
	if c.Fails < 0 {
		return fmt.Errorf("fails %d: must not be negative", c.Fails)
	}
	if c.Passes < 0 {
		return fmt.Errorf("passes %d: must not be negative", c.Passes)
	}
	switch c.InitialStatus {
	case "", "healthy", "unhealthy":
	default:
		return fmt.Errorf("initial_status %q: want healthy or unhealthy", c.InitialStatus)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d: want 1-65535", c.Port)
	}
	return nil
}

// Configured is what a checker module provides to the Scheduler.
type Configured interface {
	Checker
	Settings() *Common
}

// Passive configures passive health: MaxFails failed dials within FailDuration
// mark a backend down. MaxFails 0 disables it.
type Passive struct {
	// Failed dials that mark the backend down. 0 (default) = off.
	MaxFails int `json:"max_fails,omitempty"`
	// The window in which failures count, and, without an active check, how
	// long the backend stays down. Default 30s.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
}

// DefaultFailDuration is Passive.FailDuration when it is not set.
const DefaultFailDuration = 30 * time.Second

// MaxDefaultTimeout caps the default check timeout (the interval).
const MaxDefaultTimeout = 5 * time.Second

// window returns the effective fail_duration.
func (p *Passive) window() time.Duration {
	if p.FailDuration <= 0 {
		return DefaultFailDuration
	}
	return time.Duration(p.FailDuration)
}

// timeout returns the effective time limit of one check.
func (c *Common) timeout() time.Duration {
	if c.Timeout > 0 {
		return time.Duration(c.Timeout)
	}
	return min(time.Duration(c.Interval), MaxDefaultTimeout)
}

// ErrNoVerdict is returned (wrapped) by a checker whose check neither passed
// nor failed, such as an exec command printing neither the positive nor the
// negative output. The Scheduler leaves the backend's status and its
// consecutive counters unchanged and only logs it (Scheduler.Log).
var ErrNoVerdict = errors.New("no verdict")

// ProtocolValidator is implemented by checkers that cannot check backends of
// every server protocol. The server calls ValidateProtocol with its protocol
// ("tcp", "tls" or "udp") while provisioning.
type ProtocolValidator interface {
	ValidateProtocol(serverProtocol string) error
}

// CheckProtocol reports whether a checker of the given kind ("ping", "probe",
// ...) can check the backends of a server speaking serverProtocol. Only ping
// is restricted: a TCP connect says nothing about a UDP service.
func CheckProtocol(kind, serverProtocol string) error {
	if kind == "ping" && serverProtocol == "udp" {
		return errPingUDP
	}
	return nil
}

var errPingUDP = errors.New(`healthcheck ping: a TCP connect cannot check a UDP server; use kind "probe" with probe_protocol "udp" (or "tcp" with port, for a TCP side port), or "exec"`)
