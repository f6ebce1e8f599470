package l4handler

import (
	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/healthchecks"
	"go.uber.org/zap"
)

// newHealth builds the health tracker of a handler state: the scheduler of
// its active check and passive health, or allHealthy when it has neither.
func newHealth(h *Handler, st *state, prev *state) healthTracker {
	passive := h.PassiveHealth
	if passive != nil && passive.MaxFails == 0 {
		passive = nil
	}
	if h.checker == nil && passive == nil {
		return allHealthy{}
	}
	sch := healthchecks.NewScheduler(h.checker, passive, st.healthChanged)
	if prev != nil {
		if ps, ok := prev.health.(*healthchecks.Scheduler); ok {
			sch.Inherit = ps.Statuses()
		}
	}
	sch.Log = func(addr, msg string) {
		st.logger.Info("health check gave no verdict", zap.String("backend", addr), zap.String("detail", msg))
	}
	return sch
}

// allHealthy is the tracker of a handler without health checks.
type allHealthy struct{}

// Update ignores discovery changes: every backend is healthy.
func (allHealthy) Update([]*backend.Backend) {}

// Healthy always reports true.
func (allHealthy) Healthy(string) bool { return true }

// DialFailed ignores failed dials (no passive health).
func (allHealthy) DialFailed(string) {}

// DialSucceeded ignores successful dials.
func (allHealthy) DialSucceeded(string) {}

// Stop has nothing to stop.
func (allHealthy) Stop() {}
