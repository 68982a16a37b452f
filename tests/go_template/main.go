// Renders an Ollama-style TEMPLATE with Go's text/template, the engine Ollama uses.
// Usage: go run main.go TEMPLATE < messages.json
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	tmpl := template.Must(template.New("modelfile").Parse(os.Args[1]))
	var messages []Message
	if err := json.NewDecoder(os.Stdin).Decode(&messages); err != nil {
		panic(err)
	}
	data := map[string]any{"Messages": messages}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
