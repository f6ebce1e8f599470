package discovery

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// backendLines renders a list as backend lines, in its order.
func backendLines(l []backend.Backend) []string {
	out := make([]string, len(l))
	for i := range l {
		out[i] = l[i].String()
	}
	return out
}

// sortedLines renders a list as backend lines, sorted (nil for an empty
// list).
func sortedLines(l []backend.Backend) []string {
	if len(l) == 0 {
		return nil
	}
	out := backendLines(l)
	slices.Sort(out)
	return out
}

// asLines renders a list as backend lines, joined by " | ".
func asLines(l []backend.Backend) string {
	return strings.Join(backendLines(l), " | ")
}

// asSortedLines is asLines of the sorted backend lines.
func asSortedLines(l []backend.Backend) string {
	return strings.Join(sortedLines(l), " | ")
}

// waitList reads updates until one renders (with render, asLines when nil)
// as want, and returns how long that took; when within passes first it fails
// the test, naming what and the last list.
func waitList(t *testing.T, updates <-chan []backend.Backend, render func([]backend.Backend) string, want string, within time.Duration, what string) time.Duration {
	t.Helper()
	if render == nil {
		render = asLines
	}
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	last := "(none)"
	for {
		select {
		case l := <-updates:
			if last = render(l); last == want {
				return time.Since(start)
			}
		case <-deadline.C:
			t.Fatalf("%s: no list %q within %v (last %q)", what, want, within, last)
		}
	}
}

// waitError reads rec's errors until one mentions mention, passing every
// update that comes meanwhile to update; when within passes first it fails
// the test.
func (rec *record) waitError(t *testing.T, mention string, within time.Duration, update func([]backend.Backend)) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		select {
		case err := <-rec.errs:
			if strings.Contains(err.Error(), mention) {
				return
			}
		case l := <-rec.updates:
			update(l)
		case <-deadline.C:
			t.Fatalf("no error mentioning %q within %v", mention, within)
		}
	}
}

// endpointCase is one answer of an HTTP endpoint (json, plaintext) and what a
// fetch of it must give.
type endpointCase struct {
	name    string
	status  int // 0: 200
	body    string
	extra   string   // more fields of the source
	want    string   // backend lines when it succeeds
	wantErr []string // error parts when it fails
	skipped []int    // elements or lines skipped with a warning
}

// runEndpointCases serves each case's answer at ep+path and fetches it with
// a source of that kind; skipKey is the log field naming a skipped element
// ("element", "line").
func runEndpointCases(t *testing.T, ep *endpoint, path, kind, skipKey string, cases []endpointCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			status := tt.status
			if status == 0 {
				status = http.StatusOK
			}
			ep.set(status, tt.body)
			src := mustLoadKind(t, kind, `{"`+kind+`_endpoint":`+quote(ep.URL+path)+tt.extra+`}`)
			logs := observeLogs(sourceLogger(src))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := src.(Source).Fetch(ctx)
			if tt.wantErr != nil {
				wantErrParts(t, err, append(tt.wantErr, kind, ep.URL)...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || asLines(got) != tt.want {
				t.Fatalf("Fetch = %q, want %q", asLines(got), tt.want)
			}
			warned := logs.FilterMessageSnippet("skipping").All()
			if len(warned) != len(tt.skipped) {
				t.Fatalf("%d skip warnings, want %d: %v", len(warned), len(tt.skipped), warned)
			}
			for i, e := range warned {
				if e.ContextMap()[skipKey] != int64(tt.skipped[i]) || e.Level != zapcore.WarnLevel {
					t.Errorf("warning %v, want %s %d", e.ContextMap(), skipKey, tt.skipped[i])
				}
			}
		})
	}
}

// sourceLogger is the logger field of an HTTP endpoint source, for observeLogs.
func sourceLogger(src any) **zap.Logger {
	switch s := src.(type) {
	case *JSON:
		return &s.logger
	case *Plaintext:
		return &s.logger
	}
	panic(fmt.Sprintf("no logger in %T", src))
}

// wantErrMentioning fails the test unless err mentions mention.
func wantErrMentioning(t testing.TB, err error, mention string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), mention) {
		t.Fatalf("err = %v, want one mentioning %q", err, mention)
	}
}

// wantErrNaming fails the test unless err, returned by call ("Validate()"),
// names mention; with mention empty, unless err is nil.
func wantErrNaming(t testing.TB, call string, err error, mention string) {
	t.Helper()
	if mention == "" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), mention) {
		t.Fatalf("%s = %v, want an error naming %s", call, err, mention)
	}
}

// caddyfileCase is a Caddyfile block for a source of type T and what
// unmarshalling it must give: want, or an error mentioning wantErr.
type caddyfileCase[T any] struct {
	name, input string
	want        T
	wantErr     string
}

// runCaddyfileCases unmarshals each case's input into a zero T, in a subtest
// named after the case, and checks the result with same.
func runCaddyfileCases[T any, PT interface {
	*T
	caddyfile.Unmarshaler
}](t *testing.T, cases []caddyfileCase[T], same func(got, want *T) bool) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			var got T
			err := PT(&got).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				wantErrMentioning(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !same(&got, &tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
