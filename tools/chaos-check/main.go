// chaos-check: an independent linearizability check of a raftd client history with Porcupine
// (the checker etcd's robustness tests use), so a claim rests on more than the project's own
// checker.
//
// Input: a JSON-lines history written by `raftctl chaos` (one operation a line). Output: one JSON
// line with the verdict; on a violation, Porcupine's own visualization (HTML) at -viz.
//
// The model is a map of independent keys (partitioned per key): put, get (linearizable levels
// only; stale reads are not in this history), compare-and-swap and delete. An operation whose
// outcome is unknown may have taken effect at any time after its call: it returns "never" and
// accepts any output. An operation that was not applied is left out.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/anishathalye/porcupine"
)

// Op is one line of the history.
type Op struct {
	Client     int     `json:"client"`
	Kind       string  `json:"op"` // put, get, cas, delete
	Key        string  `json:"key"`
	Value      *string `json:"value,omitempty"`  // put: the value; cas: the new value
	Expect     *string `json:"expect,omitempty"` // cas: the expected value (nil: absent)
	InvokeNs   int64   `json:"invoke_ns"`
	CompleteNs int64   `json:"complete_ns"`
	Outcome    string  `json:"outcome"` // ok, not_applied, unknown
	// Results, when ok.
	Found     bool    `json:"found,omitempty"`
	Read      *string `json:"read,omitempty"`      // get: the value read
	Succeeded bool    `json:"succeeded,omitempty"` // cas
	Seen      *string `json:"seen,omitempty"`      // cas: the value the comparison saw
	Deleted   bool    `json:"deleted,omitempty"`   // delete
}

type input struct {
	kind    string
	key     string
	value   *string
	expect  *string
	unknown bool
}

type output struct {
	read      *string
	succeeded bool
	seen      *string
	deleted   bool
}

func eq(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func show(s *string) string {
	if s == nil {
		return "∅"
	}
	return fmt.Sprintf("%q", *s)
}

var model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(input).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return (*string)(nil) },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		s := state.(*string)
		i := in.(input)
		o := out.(output)
		switch i.kind {
		case "put":
			return true, i.value
		case "get":
			return i.unknown || eq(o.read, s), s
		case "delete":
			return i.unknown || o.deleted == (s != nil), (*string)(nil)
		case "cas":
			match := eq(s, i.expect)
			if !i.unknown && (o.succeeded != match || !eq(o.seen, s)) {
				return false, s
			}
			if match {
				return true, i.value
			}
			return true, s
		}
		return false, s
	},
	Equal: func(a, b interface{}) bool { return eq(a.(*string), b.(*string)) },
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		o := out.(output)
		suffix := ""
		if i.unknown {
			suffix = " (outcome unknown)"
		}
		switch i.kind {
		case "put":
			return fmt.Sprintf("put(%s, %s)%s", i.key, show(i.value), suffix)
		case "get":
			return fmt.Sprintf("get(%s) -> %s%s", i.key, show(o.read), suffix)
		case "delete":
			return fmt.Sprintf("delete(%s) -> %v%s", i.key, o.deleted, suffix)
		default:
			return fmt.Sprintf("cas(%s, %s -> %s) -> %v saw %s%s", i.key, show(i.expect), show(i.value), o.succeeded, show(o.seen), suffix)
		}
	},
	DescribeState: func(state interface{}) string { return show(state.(*string)) },
}

type verdict struct {
	Linearizable  bool   `json:"linearizable"`
	Result        string `json:"result"`
	Operations    int    `json:"operations"`
	Unknown       int    `json:"unknown"`
	NotApplied    int    `json:"not_applied"`
	Keys          int    `json:"keys"`
	CheckMs       int64  `json:"check_ms"`
	Visualization string `json:"visualization,omitempty"`
}

func main() {
	historyPath := flag.String("history", "", "JSON-lines history written by raftctl chaos")
	vizPath := flag.String("viz", "", "where to write Porcupine's visualization on a violation")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after this long (result: unknown)")
	flag.Parse()
	if *historyPath == "" {
		fmt.Fprintln(os.Stderr, "chaos-check: -history is required")
		os.Exit(2)
	}
	f, err := os.Open(*historyPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos-check: %v\n", err)
		os.Exit(2)
	}
	defer f.Close()
	var ops []porcupine.Operation
	v := verdict{}
	keys := map[string]bool{}
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	line := 0
	for scanner.Scan() {
		line++
		var op Op
		if err := json.Unmarshal(scanner.Bytes(), &op); err != nil {
			fmt.Fprintf(os.Stderr, "chaos-check: %s line %d: %v\n", *historyPath, line, err)
			os.Exit(2)
		}
		switch op.Outcome {
		case "not_applied":
			v.NotApplied++
			continue
		case "ok", "unknown":
		default:
			fmt.Fprintf(os.Stderr, "chaos-check: %s line %d: outcome %q is not ok, not_applied or unknown\n", *historyPath, line, op.Outcome)
			os.Exit(2)
		}
		in := input{kind: op.Kind, key: op.Key, value: op.Value, expect: op.Expect, unknown: op.Outcome == "unknown"}
		out := output{succeeded: op.Succeeded, seen: op.Seen, deleted: op.Deleted}
		if op.Kind == "get" && op.Found {
			out.read = op.Read
		}
		ret := op.CompleteNs
		if in.unknown {
			v.Unknown++
			ret = math.MaxInt64
		}
		keys[op.Key] = true
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: in, Call: op.InvokeNs, Output: out, Return: ret})
	}
	if err := scanner.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "chaos-check: reading %s: %v\n", *historyPath, err)
		os.Exit(2)
	}
	v.Operations = len(ops)
	v.Keys = len(keys)
	started := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, ops, *timeout)
	v.CheckMs = time.Since(started).Milliseconds()
	v.Result = string(result)
	v.Linearizable = result == porcupine.Ok
	if result == porcupine.Illegal && *vizPath != "" {
		if err := porcupine.VisualizePath(model, info, *vizPath); err == nil {
			v.Visualization = *vizPath
		}
	}
	enc, _ := json.Marshal(v)
	fmt.Println(string(enc))
	if result == porcupine.Illegal {
		os.Exit(1)
	}
	if result != porcupine.Ok {
		os.Exit(3)
	}
}
