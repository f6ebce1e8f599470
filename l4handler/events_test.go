package l4handler

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	_ "github.com/caddy-between/between/healthchecks"
)

type eventRecorder struct {
	mu     sync.Mutex
	events []caddy.Event
}

func (r *eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func (r *eventRecorder) find(name, backend string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Name() == name && e.Data["backend"] == backend && e.Data["server"] == "ev" {
			return true
		}
	}
	return false
}

// TestHealthEvents: a backend that goes away and comes back emits
// between.backend_down and between.backend_up through Caddy's events app, and
// discovery emits between.discovery_updated.
func TestHealthEvents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	backend := ln.Addr().String()
	lport, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := lport.Addr().String()
	lport.Close()

	ctx := newTestContext(t)
	ev, err := ctx.App("events")
	if err != nil {
		t.Fatal(err)
	}
	rec := new(eventRecorder)
	for _, name := range []string{"between.backend_up", "between.backend_down", "between.discovery_updated"} {
		if err := ev.(*caddyevents.App).On(name, rec); err != nil {
			t.Fatal(err)
		}
	}
	var a App
	js := fmt.Sprintf(`{"servers":{"ev":{"listen":[%q],"discovery":{"kind":"static","static_list":[%q]},
		"healthcheck":{"kind":"ping","interval":"50ms","timeout":"50ms"}}}}`, listen, backend)
	if err := json.Unmarshal([]byte(js), &a); err != nil {
		t.Fatal(err)
	}
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		a.Stop()
		a.Cleanup()
	}()
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s event", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("discovery_updated", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, e := range rec.events {
			if e.Name() == "between.discovery_updated" && e.Data["server"] == "ev" && e.Data["added"] == 1 {
				return true
			}
		}
		return false
	})
	ln.Close()
	wait("backend_down", func() bool { return rec.find("between.backend_down", backend) })
	ln2, err := net.Listen("tcp", backend)
	if err != nil {
		t.Fatalf("reopening %s: %v", backend, err)
	}
	defer ln2.Close()
	go func() {
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	wait("backend_up", func() bool { return rec.find("between.backend_up", backend) })
}
