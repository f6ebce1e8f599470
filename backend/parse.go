package backend

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Parse reads a gobetween backend line:
//
//	host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]
//
// Attributes come in any order, separated by any amount of white space; an
// IPv6 host is written in brackets ([::1]:80). Defaults: weight 1, priority 1,
// max_connections 0 (unlimited), no sni. Every problem is reported with the
// offending part of the line.
func Parse(line string) (Backend, error) {
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return Backend{}, fmt.Errorf("empty backend line")
	}
	b := Backend{Weight: 1, Priority: 1}
	host, port, err := SplitHostPort(fields[0])
	if err != nil {
		return Backend{}, err
	}
	b.Host, b.Port = host, port
	seen := make(map[string]bool, 4)
	for _, f := range fields[1:] {
		key, val, ok := strings.Cut(f, "=")
		if !ok || val == "" {
			return Backend{}, fmt.Errorf("backend %s: attribute %q: want key=value", fields[0], f)
		}
		key = strings.ToLower(key)
		if seen[key] {
			return Backend{}, fmt.Errorf("backend %s: attribute %q given twice", fields[0], key)
		}
		seen[key] = true
		switch key {
		case "weight", "priority", "max_connections":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return Backend{}, fmt.Errorf("backend %s: %s=%q: want a non-negative integer", fields[0], key, val)
			}
			if n > 1<<30 {
				return Backend{}, fmt.Errorf("backend %s: %s=%q: too large", fields[0], key, val)
			}
			switch key {
			case "weight":
				b.Weight = n
			case "priority":
				b.Priority = n
			default:
				b.MaxConnections = n
			}
		case "sni":
			b.SNI = val
		default:
			return Backend{}, fmt.Errorf("backend %s: unknown attribute %q (want weight, priority, max_connections or sni)", fields[0], key)
		}
	}
	return b, nil
}

// SplitHostPort splits and checks "host:port": the port must be 1-65535 and the
// host non-empty; IPv6 hosts must be bracketed.
func SplitHostPort(s string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(s)
	if err != nil {
		return "", "", fmt.Errorf("backend address %q: want host:port ([v6]:port for IPv6)", s)
	}
	if host == "" {
		return "", "", fmt.Errorf("backend address %q: empty host", s)
	}
	if strings.ContainsAny(host, " \t/") {
		return "", "", fmt.Errorf("backend address %q: invalid host", s)
	}
	if strings.Contains(host, ":") && !strings.HasPrefix(s, "[") {
		return "", "", fmt.Errorf("backend address %q: IPv6 host must be in brackets", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("backend address %q: port %q must be a number from 1 to 65535", s, port)
	}
	return host, strconv.Itoa(n), nil
}
