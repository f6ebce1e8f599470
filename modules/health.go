package modules

import "github.com/caddy-between/between/backend"

// newHealth builds the health tracker of a server state.
func newHealth(s *Server, st *serverState) healthTracker {
	return allHealthy{}
}

// allHealthy is the tracker of a server without health checks.
type allHealthy struct{}

func (allHealthy) Update([]*backend.Backend) {}
func (allHealthy) Healthy(string) bool       { return true }
func (allHealthy) DialFailed(string)         {}
func (allHealthy) DialSucceeded(string)      {}
func (allHealthy) Stop()                     {}
