// Material's search worker, with each English word of a query stemmed as the words of
// the index are. Material adds a trailing "*" to every query term (results while you
// type), and lunr matches a term with a wildcard without running its pipeline, so
// "summaries*" never met the index's stemmed "summari". The hook writes this file
// next to Material's worker, with the name of that worker in MATERIAL_WORKER.
let stemQueries = false;  // set from the index's languages when the worker is set up

function stemWords(query) {
  // Identifiers (weights_only, IntermediateLayerGetter) are stemmed as the index
  // stemmed them; a field name before ":" is left alone.
  return query.replace(/\b[A-Za-z][A-Za-z0-9_]*\b(?!:)/g,
    word => self.lunr.stemmer(new self.lunr.Token(word.toLowerCase())).toString());
}

const listen = self.addEventListener.bind(self);
self.addEventListener = (type, handler, options) => listen(type, type !== "message" ? handler
  : event => {
    const message = event.data;
    if (message.type === 0) {  // setup: the index and its configuration
      stemQueries = message.data.config.lang.includes("en");
    } else if (message.type === 2 && stemQueries) {  // a query
      return handler({data: {type: 2, data: stemWords(message.data)}});
    }
    return handler(event);
  }, options);

importScripts(MATERIAL_WORKER);
