package l4handler

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// recorded holds the events the recorder module saw.
var recorded struct {
	mu     sync.Mutex
	events []caddy.Event
}

// eventRecorder is an events app handler for tests: it keeps every event.
type eventRecorder struct{}

// CaddyModule returns the Caddy module information.
func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.between_test_recorder",
		New: func() caddy.Module { return new(eventRecorder) },
	}
}

// Handle records e.
func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	recorded.events = append(recorded.events, e)
	return nil
}

// seen reports whether an event of that name matching data was recorded.
func seen(name string, data map[string]any) bool {
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
next:
	for _, e := range recorded.events {
		if e.Name() != name {
			continue
		}
		for k, v := range data {
			if e.Data[k] != v {
				continue next
			}
		}
		return true
	}
	return false
}

// TestHealthEvents: a backend that goes away and comes back emits
// between.backend_down and between.backend_up through Caddy's events app, and
// discovery emits between.discovery_updated, each naming the handler.
func TestHealthEvents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve := func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}
	go serve(ln)
	backend := ln.Addr().String()

	h := handlerJSON("ev", fmt.Sprintf(`"discovery":{"kind":"static","static_list":[%q]},
		"healthcheck":{"kind":"ping","interval":"50ms","timeout":"50ms"}`, backend))
	cfg := fmt.Sprintf(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}},"apps":{
		"events":{"subscriptions":[{"events":["between.backend_up","between.backend_down","between.discovery_updated"],
			"handlers":[{"handler":"between_test_recorder"}]}]},
		"layer4":{"servers":{"a":%s}}}}`, server("between+tcp/"+freeAddr(t), h))
	run(t, []byte(cfg))

	waitFor(t, 3*time.Second, "discovery_updated", func() bool {
		return seen("between.discovery_updated", map[string]any{"handler": "ev", "added": 1})
	})
	ln.Close()
	waitFor(t, 3*time.Second, "backend_down", func() bool {
		return seen("between.backend_down", map[string]any{"handler": "ev", "backend": backend})
	})
	ln2, err := net.Listen("tcp", backend)
	if err != nil {
		t.Fatalf("reopening %s: %v", backend, err)
	}
	defer ln2.Close()
	go serve(ln2)
	waitFor(t, 3*time.Second, "backend_up", func() bool {
		return seen("between.backend_up", map[string]any{"handler": "ev", "backend": backend})
	})
}
