package l4handler

import (
	"errors"
	"strings"
	"testing"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
)

// asAPIError returns the HTTP status of a caddy.APIError.
func asAPIError(err error) (int, bool) {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae.HTTPStatus, true
	}
	return 0, false
}

// TestStatusPageEscapes: names and addresses are HTML-escaped and every
// backend shows its state and health class.
func TestStatusPageEscapes(t *testing.T) {
	var b strings.Builder
	err := statusPage.Execute(&b, map[string]any{"Now": "now", "Handlers": []statusHandler{{
		Info: HandlerInfo{Name: `<script>x</script>`},
		Stats: ServerStats{Backends: []BackendStats{
			{Host: "10.0.0.1", Port: "80", State: StateReady, Stats: BackendCounts{Live: true}},
			{Host: "10.0.0.2", Port: "80", State: StateDrain, Stats: BackendCounts{Live: true}},
			{Host: "::1", Port: "80", State: StateReady, Stats: BackendCounts{Snapshot: backend.Snapshot{Rx: 3 << 20}}},
		}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	page := b.String()
	if strings.Contains(page, "<script>x</script>") {
		t.Error("handler name not escaped")
	}
	for _, want := range []string{
		`class="backend up" data-backend="10.0.0.1:80"`,
		`class="backend drain" data-backend="10.0.0.2:80"`,
		`class="backend down" data-backend="[::1]:80"`,
		`<span class="badge b-drain">drain</span>`,
		`3.0 MiB`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
